"""``colo launcher serve|start|status|stop``: the node launcher (:mod:`colo.launch.node_launcher`).

A launcher that has imported torch, transformers and the HTTP stack before ``colo up`` is typed: every ``colo
up`` (and a detached orchestrator) on this node forks its built-in agents from it instead of importing for
seconds first. It holds no CUDA context and no GPU memory; ``colo down`` leaves it running, ``colo launcher
stop`` ends it. ``serve`` runs it in the foreground (a systemd unit: ``colo render systemd`` writes ``colo-launcher.service``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from colo.cli.common import console, err_console, print_json, safe
from colo.errors import ColoError, UsageError

launcher_app = typer.Typer(
    help="The node launcher: torch and transformers imported before `colo up`, agents forked from it."
)

SOCKET_OPT = typer.Option(
    None, "--socket", help="Its Unix socket (default: COLO_LAUNCHER_SOCKET, else /run/colo for root)."
)
MODELS_OPT = typer.Option(
    None, "--models-of", exists=True, dir_okay=False, help="Also import the model classes of this colo.yaml's agents."
)
#: How long ``colo launcher stop`` waits for it to exit after SIGTERM before SIGKILL.
STOP_WAIT_SECS = 10.0


def _socket(path: Path | None) -> Path:
    from colo.launch.node_launcher import default_socket

    return path if path is not None else default_socket()


def _check_dir(path: Path) -> None:
    from colo.launch.node_launcher import NodeLauncherError, prepare_dir

    try:
        prepare_dir(path)
    except NodeLauncherError as exc:
        raise UsageError(f"cannot use {path} for the node launcher's socket: {exc}", hint="pass --socket") from exc


@launcher_app.command("serve")
def serve_command(socket: Path | None = SOCKET_OPT, models_of: Path | None = MODELS_OPT) -> None:
    """Run the node launcher in the foreground until SIGTERM or Ctrl-C (for a systemd unit)."""
    from colo.launch.node_launcher import command_line
    from colo.launch.prestart import launcher_env

    path = _socket(socket)
    _check_dir(path)
    argv = command_line(path, models_of=models_of)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, launcher_env())


@launcher_app.command("start")
def start_command(
    socket: Path | None = SOCKET_OPT,
    models_of: Path | None = MODELS_OPT,
    log_file: Path | None = typer.Option(None, "--log", help="Its log (default: STATE_DIR/launcher.log)."),
    wait: float = typer.Option(180.0, "--wait", min=1.0, help="Seconds to wait for its imports."),
) -> None:
    """Start the node launcher in the background and wait until it answers (nothing to do if one does)."""
    from colo.files import state_dir
    from colo.launch.node_launcher import NodeLauncherError, command_line, connect
    from colo.launch.prestart import launcher_env

    path = _socket(socket)
    _check_dir(path)
    try:
        held = connect(path)
    except NodeLauncherError as exc:
        raise ColoError(f"something else answers at {path}: {exc}", hint="stop it, or pass --socket") from exc
    if held is not None:
        held.close()
        console.print(safe(f"node launcher already running at {path} (pid {held.node.pid})"), highlight=False)
        return
    log_path = log_file if log_file is not None else state_dir() / "launcher.log"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                command_line(path, models_of=models_of),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=launcher_env(),
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        raise ColoError(f"cannot start the node launcher (log {log_path}): {exc.strerror or exc}") from exc
    started = time.monotonic()
    while time.monotonic() - started < wait:
        if proc.poll() is not None:
            raise ColoError(
                f"the node launcher exited with code {proc.returncode} while starting",
                hint=f"its log: {log_path}\n{_tail(log_path)}",
            )
        try:
            session = connect(path)
        except NodeLauncherError:
            session = None
        if session is not None:
            session.close()
            took = time.monotonic() - started
            console.print(
                safe(f"node launcher ready at {path} (pid {proc.pid}) after {took:.1f} s; log {log_path}"),
                highlight=False,
            )
            return
        time.sleep(0.1)
    raise ColoError(
        f"the node launcher (pid {proc.pid}) did not answer at {path} within {wait:g} s",
        hint=f"it goes on starting; see {log_path}, or `colo launcher stop`",
    )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@launcher_app.command("status")
def status_command(
    socket: Path | None = SOCKET_OPT, as_json: bool = typer.Option(False, "--json", help="As JSON.")
) -> None:
    """Whether a node launcher answers, since when, its imports, and whether this colo forks from it."""
    from colo.launch.forkserver import secs_text
    from colo.launch.node_launcher import NodeLauncherError, connect, unusable
    from colo.launch.prestart import launcher_env

    path = _socket(socket)
    error: str | None = None
    try:
        session = connect(path)
    except NodeLauncherError as exc:
        session, error = None, str(exc)
    if session is None:
        what = error or "none answers there"
        if as_json:
            print_json({"socket": str(path), "running": False, "error": what})
        else:
            err_console.print(safe(f"no node launcher at {path}: {what}"), highlight=False)
        raise typer.Exit(1)
    session.close()
    node = session.node
    why = unusable(node, python=sys.executable, preload=True, env=launcher_env())
    if as_json:
        print_json(
            {"socket": str(path), "running": True, "node": node.to_dict(), "usable": why is None, "why_not": why}
        )
        return
    age = time.time() - node.started_unix
    imports = secs_text(node.import_secs) or "none (started with --no-preload)"
    console.print(safe(f"node launcher at {path}: pid {node.pid}, up {age:.0f} s, {node.python}"), highlight=False)
    console.print(safe(f"  imports: {imports}; code {node.signature}"), highlight=False)
    console.print(
        safe(
            "  this colo forks its built-in agents from it"
            if why is None
            else f"  this colo does not fork from it: {why}"
        ),
        highlight=False,
    )


@launcher_app.command("stop")
def stop_command(socket: Path | None = SOCKET_OPT) -> None:
    """Stop the node launcher (agents forked from it, and the colos they belong to, go on)."""
    from colo.gpu import procs
    from colo.launch.node_launcher import NodeLauncherError, connect

    path = _socket(socket)
    try:
        session = connect(path)
    except NodeLauncherError as exc:
        raise ColoError(f"cannot stop what answers at {path}: {exc}") from exc
    if session is None:
        console.print(safe(f"no node launcher at {path}; nothing to stop"), highlight=False)
        return
    session.close()
    pid = session.node.pid
    started = procs.create_time(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        console.print(safe(f"node launcher (pid {pid}) already gone"), highlight=False)
        return
    deadline = time.monotonic() + STOP_WAIT_SECS
    while time.monotonic() < deadline and procs.is_alive(pid, started):
        time.sleep(0.05)
    if procs.is_alive(pid, started):
        os.kill(pid, signal.SIGKILL)
        console.print(safe(f"node launcher (pid {pid}) did not stop in {STOP_WAIT_SECS:g} s: killed"), highlight=False)
        return
    console.print(safe(f"node launcher (pid {pid}) stopped; {path} removed"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``colo launcher ...``."""
    app.add_typer(launcher_app, name="launcher")
