"""The launcher started before colo knows it wants one: ``colo up CONFIG`` in the foreground.

The launcher (:mod:`colo.launch.forkserver`) spends seconds importing torch and transformers before it can fork
an agent, and ``colo up`` waits for it; every moment before it starts is added to the agents' start. The console
script (:mod:`colo.cli.entry`) therefore calls :func:`for_command_line` before it imports the CLI itself (typer,
pydantic, the planner, the NVML door: 0.5-0.9 s before ``colo up`` reached its launcher on a 2-core CPU host,
2026-12-06). For ``colo up CONFIG`` without ``--detach`` it starts the launcher at once, importing the config's
model classes too, with its log in a temporary file. ``colo up`` claims it (:func:`claim`, through
:meth:`colo.launch.fork_runner.ForkRunner.start`) where it would have started one itself — same interpreter,
same command line, same environment — and the runner then tells it its real log file (the temporary one's lines
move there). Anything else — another command, a config with no built-in agent, ``policy.launcher: spawn``, an
error before the plan — leaves it unclaimed, and the entry kills it as the command ends (:func:`discard`): it
has forked nothing, and it never touches CUDA.

This module is also where the launcher's command line (:func:`launcher_argv`) and environment
(:func:`launcher_env`) are made, for the runner's own starts too.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from colo.launch.forkserver import EARLY_LOG_OPTION, MODULE, ZYGOTE_ENV_DEFAULTS
from colo.launch.runner import base_env

#: ``colo up`` options that take a value (the config is the first argument that is neither an option nor such
#: a value).
_UP_VALUE_OPTIONS = frozenset({"--mps", "--node", "--state-dir"})
#: ``colo up`` options after which no launcher is started: the detached orchestrator starts its own, in another
#: process; ``--help`` starts nothing.
_UP_NO_LAUNCHER = frozenset({"--detach", "-d", "--help"})


@dataclass
class Prestarted:
    """A launcher started by :func:`for_command_line`, not yet claimed."""

    proc: subprocess.Popen[bytes]
    argv: list[str]  # the launcher's command line (:func:`launcher_argv`), without the early-log option
    env: dict[str, str]
    early_log: Path  # its stderr until the runner names the log file


_lock = threading.Lock()
_held: Prestarted | None = None


def launcher_argv(python: str, *, preload: bool, models_of: Path | None) -> list[str]:
    """The launcher's command line (``models_of``: the colo.yaml whose model classes it imports too)."""
    argv = [python, "-m", MODULE] + ([] if preload else ["--no-preload"])
    if preload and models_of is not None:
        argv += ["--models-of", str(models_of)]
    return argv


def launcher_env() -> dict[str, str]:
    """The launcher's environment: colo's (:func:`~colo.launch.runner.base_env`) with
    :data:`~colo.launch.forkserver.ZYGOTE_ENV_DEFAULTS` where it does not set them."""
    env = base_env()
    for key, value in ZYGOTE_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def popen_launcher(argv: Sequence[str], env: dict[str, str], stderr: int) -> subprocess.Popen[bytes]:
    """Start the launcher: control messages on its stdin and stdout, its log on ``stderr`` (a file descriptor),
    in a session of its own (a Ctrl-C to ``colo up`` is colo's to handle, not the launcher's). Raises OSError."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def up_config(args: Sequence[str]) -> Path | None:
    """The config of ``args`` (``sys.argv[1:]``) when they are ``up CONFIG [options]`` in the foreground and
    CONFIG is a file, resolved; else None. Options are not checked here: the CLI does that."""
    if not args or args[0] != "up" or any(a in _UP_NO_LAUNCHER for a in args[1:]):
        return None
    skip = False
    for arg in args[1:]:
        if skip:
            skip = False
        elif arg in _UP_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            path = Path(arg)
            return path.resolve() if path.is_file() else None
    return None


def for_command_line(args: Sequence[str], python: str = sys.executable, *, preload: bool = True) -> bool:
    """Start the launcher now when ``args`` are ``colo up CONFIG`` in the foreground (:func:`up_config`);
    whether it started. Never raises: a launcher that cannot start here is started by ``colo up`` as before.
    (``preload=False``: one that imports nothing heavy, for tests.)"""
    global _held
    config = up_config(args)
    if config is None or _node_launcher_listens():
        return False
    try:
        fd, name = tempfile.mkstemp(prefix="colo-launcher-", suffix=".log")
    except OSError:
        return False
    argv, env = launcher_argv(python, preload=preload, models_of=config), launcher_env()
    try:
        proc = popen_launcher([*argv, EARLY_LOG_OPTION, name], env, fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(name)
        return False
    finally:
        os.close(fd)
    with _lock:
        previous, _held = _held, Prestarted(proc, argv, env, Path(name))
    if previous is not None:
        _end(previous)
    return True


def _node_launcher_listens() -> bool:
    """Whether a node launcher's socket is there (:mod:`colo.launch.node_launcher`): ``colo up`` then forks from
    it, and no launcher of its own is worth starting. (Only looked at, not asked: a stale socket costs ``colo
    up`` its head start, nothing else.)"""
    from colo.launch.node_launcher import default_socket

    with contextlib.suppress(OSError):
        return stat.S_ISSOCK(default_socket().lstat().st_mode)
    return False


def claim(argv: Sequence[str], env: dict[str, str]) -> Prestarted | None:
    """The launcher :func:`for_command_line` started, when it runs ``argv`` (what the caller would start) with
    ``env`` and is still alive; it is the caller's from then on. Else None (one that does not match is ended)."""
    global _held
    with _lock:
        held, _held = _held, None
    if held is None:
        return None
    if held.argv != list(argv) or held.env != env or held.proc.poll() is not None:
        _end(held)
        return None
    return held


def discard() -> None:
    """End the launcher :func:`for_command_line` started if nobody claimed it (the command ends)."""
    global _held
    with _lock:
        held, _held = _held, None
    if held is not None:
        _end(held)


def _end(held: Prestarted) -> None:
    """Kill an unclaimed launcher (it has forked nothing) and remove its early log."""
    with contextlib.suppress(OSError):
        held.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        held.proc.wait(timeout=5.0)
    for pipe in (held.proc.stdin, held.proc.stdout):
        with contextlib.suppress(OSError, ValueError):
            if pipe is not None:
                pipe.close()
    with contextlib.suppress(OSError):
        held.early_log.unlink()
