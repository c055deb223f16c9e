"""Helpers shared by the CLI's commands: consoles, user text made safe to print, JSON output, the error path.

User text (file names, model and agent names, config keys and values, server answers) is never markup and
never reaches the terminal raw: :func:`safe` escapes rich markup *and* control characters (terminal escape
sequences, NUL, lone surrogates). Every error leaves through :func:`report_error`: one paragraph on stderr;
the exit code is the error's (1 findings/failures, 2 usage or configuration); an unexpected exception is
:func:`report_crash`'s one line naming the file the traceback was written to, exit 70. A reader that went away
(``colo plan … | head``) is no error: :func:`exit_closed_output` exits 141 quietly, as git and ls do.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import select
import sys
import tempfile
import time
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from colo.errors import ColoError

EXIT_CRASH = 70  # EX_SOFTWARE: a bug in colo, not in the user's input
# 128 + SIGPIPE: what a shell shows for `git log | head` or `ls | head` when the reader leaves early, so a
# `set -o pipefail` script sees colo like any other tool (output was cut short: not 0, but no failure either).
EXIT_CLOSED_PIPE = 141


def _console(stderr: bool) -> Console:
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    # Piped output (CI logs, `colo plan | grep`) keeps tables 160 wide and never wraps a sentence.
    return Console(stderr=stderr, width=None if tty else 160, soft_wrap=not tty)


console = _console(stderr=False)
err_console = _console(stderr=True)


def _escape_char(ch: str, keep_newlines: bool) -> str:
    code = ord(ch)
    if keep_newlines and ch in "\n\t":
        return ch
    if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e"}.get(ch, f"\\x{code:02x}")
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"  # a lone surrogate cannot be encoded to the terminal
    if code in (0x200E, 0x200F, 0x2028, 0x2029) or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069:
        return f"\\u{code:04x}"  # bidirectional overrides and line separators reorder what the reader sees
    return ch


def plain(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters, lone surrogates and bidi overrides escaped (``\\e``, ``\\x00``)."""
    s = str(text)
    if s.isprintable() and not any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        return s
    return "".join(_escape_char(c, keep_newlines) for c in s)


def safe(text: object, *, keep_newlines: bool = False) -> str:
    """User text for a rich markup string: :func:`plain`, then markup escaped (``[red]`` prints as itself)."""
    return escape(plain(text, keep_newlines=keep_newlines))


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout, no colour, no wrapping.

    Strings are ASCII-escaped JSON, so control characters and lone surrogates cannot reach the terminal.
    """
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def report_error(err: ColoError | str, *, label: str = "error") -> None:
    """One paragraph on stderr for ``err``: ``error: <message> — <hint>`` (user text escaped)."""
    err_console.print(f"[bold red]{label}:[/] {safe(err, keep_newlines=True)}", highlight=False, soft_wrap=True)


def fail(err: ColoError) -> NoReturn:
    """Print one paragraph for ``err`` on stderr and exit with its code."""
    report_error(err)
    raise typer.Exit(err.exit_code)


def crash_log_dir() -> Path:
    """Where tracebacks of crashes go: ``<state dir>/crashes`` when writable, else the temp directory."""
    from colo.files import default_state_dir

    for base in (default_state_dir() / "crashes", Path(tempfile.gettempdir())):
        try:
            base.mkdir(parents=True, exist_ok=True)
            if os.access(base, os.W_OK):
                return base
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def report_crash(exc: BaseException) -> int:
    """Write ``exc``'s traceback to a file and print ONE line saying where; returns the exit code (70)."""
    text = "".join(traceback.format_exception(exc))
    where: str
    try:
        fd, name = tempfile.mkstemp(
            prefix=time.strftime("colo-crash-%Y%m%d-%H%M%S-"), suffix=".log", dir=crash_log_dir()
        )
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(f"colo {' '.join(sys.argv[1:])}\n\n{text}")
        where = name
    except OSError:
        where = "(could not be written)"
    err_console.print(
        f"[bold red]internal error:[/] colo crashed ({safe(type(exc).__name__)}); the details are in "
        f"{safe(where)} — please report it with that file",
        highlight=False, soft_wrap=True,
    )
    return EXIT_CRASH


def closed_output_fds() -> list[int]:
    """Which of stdout (1) and stderr (2) are pipes whose reader has gone (``poll`` reports POLLERR)."""
    closed = []
    for fd in (1, 2):
        try:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                closed.append(fd)
        except (OSError, ValueError, AttributeError):  # fd not open; no poll() on this platform
            continue
    return closed


def exit_closed_output(closed_fds: list[int]) -> NoReturn:
    """Exit 141 without a word: the reader of ``closed_fds`` left (``colo … | head``), which is normal.

    Each closed descriptor is pointed at /dev/null first, so the interpreter's last flush of what is still
    buffered cannot fail again ("Exception ignored … BrokenPipeError", exit 120).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in closed_fds:
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.exit(EXIT_CLOSED_PIPE)


# -- options several commands share ---------------------------------------------------------------------

STATE_DIR_HELP = "colo's state directory (default: the config's state_dir, $COLO_STATE_DIR, or the default)."


def state_dir_for(state_dir: Path | None, config: Path | None) -> Path:
    """The state dir a command on a running colo works on: ``--state-dir``, else ``--config``'s ``state_dir``
    (the file is loaded only then), else the default (``$COLO_STATE_DIR`` …)."""
    from colo.supervise.statedir import resolve_state_dir

    cfg = None
    if config is not None and state_dir is None:
        from colo.spec import load_config

        cfg = load_config(config)
    return resolve_state_dir(cfg, state_dir)



@dataclass(frozen=True)
class OptionGroup:
    """Options several commands share, declared once: ``options`` is each one's (name, annotation, typer
    Option or Argument); a command that takes the group as a parameter (``shape: Shape = SHAPE_OPTIONS``,
    decorated with :func:`with_option_groups`) shows them in its place and gets ``build(**their values)``."""

    build: Callable[..., Any]
    options: tuple[tuple[str, Any, Any], ...]


def with_option_groups(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` with each parameter whose default is an :class:`OptionGroup` spread into that group's options."""
    hints = typing.get_type_hints(fn)
    params: list[inspect.Parameter] = []
    groups: dict[str, OptionGroup] = {}
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if isinstance(p.default, OptionGroup):
            groups[p.name] = p.default
            params += [inspect.Parameter(n, p.kind, default=d, annotation=a) for n, a, d in p.default.options]
        else:
            params.append(p.replace(annotation=hints.get(p.name, p.annotation)))

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> None:
        for name, group in groups.items():
            kwargs[name] = group.build(**{n: kwargs.pop(n) for n, _, _ in group.options})
        fn(*args, **kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
