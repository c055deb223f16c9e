"""The node launcher: ``colo launcher serve``, a pre-imported launcher that is warm before ``colo up`` begins.

``colo up`` of a config with built-in agents waits for its launcher (:mod:`colo.launch.forkserver`) to import
torch, transformers and the HTTP stack before it can fork an agent: 8.2 s of an 11 s start of the sized
newsroom on the H100 host (docs/reliability.md), and nothing colo does around that import shortens it. The node
launcher does those imports once, when the node starts (a systemd unit, ``colo render systemd``, or ``colo
launcher start``), never initialises CUDA, and waits on a Unix socket (:func:`default_socket`). Each client —
the runner of a ``colo up`` or a detached orchestrator (:class:`colo.launch.fork_runner.ForkRunner`) — gets a
*session*: a child forked from the node launcher for that connection, already imported, which speaks the
launcher's own protocol over the socket (``zygote_loop``: fork requests, exits, ``log_to``) and forks that
client's agents. When the client closes the connection (``colo down``, an orchestrator that died) its session
exits, its agents keep running, and the node launcher is as it was: no CUDA context, no GPU memory, no agent.

A session says who it is in its ready message (``"node"``: :class:`NodeInfo`): the node launcher's pid, its
interpreter, the signature of the colo code and the torch/transformers it imported (:func:`code_signature`),
and the variables read at process start it runs with. A client forks from it only when all of these are its
own (:func:`unusable` says why not; the client then starts its own launcher as before): an upgraded colo, or
another Python, never gets agents forked from stale code. Only the node launcher's own user may connect (the
socket's directory is ``0700``, and each side checks the other's uid with ``SO_PEERCRED``).

``python -m colo.launch.node_launcher --socket PATH`` runs it; ``colo launcher`` starts, shows and stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from colo.launch import forkserver as fs

MODULE = "colo.launch.node_launcher"
#: The environment variable naming the node launcher's socket (else :func:`default_socket`).
SOCKET_ENV = "COLO_LAUNCHER_SOCKET"
#: How long a client waits for a session's ready line after connecting.
CONNECT_SECS = 5.0
#: The distributions whose versions are part of :func:`code_signature` (what an agent imports besides colo).
SIGNED_DISTRIBUTIONS = ("torch", "transformers")


class NodeLauncherError(Exception):
    """Something answers at the socket, but not as a usable node launcher (the message says what)."""


def default_socket() -> Path:
    """``$COLO_LAUNCHER_SOCKET``, else ``/run/colo/launcher.sock`` for root, else
    ``$XDG_RUNTIME_DIR/colo/launcher.sock``, else ``<tmp>/colo-<uid>/launcher.sock``."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/colo/launcher.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "colo" / "launcher.sock"
    return Path(tempfile.gettempdir()) / f"colo-{os.geteuid()}" / "launcher.sock"


def code_signature() -> str:
    """What the agents forked from a launcher run: colo's sources (every ``.py`` of the package, by path and
    content), the interpreter's version and the versions of :data:`SIGNED_DISTRIBUTIONS`; a short hex digest.
    A client forks from a node launcher only when this is equal on both sides."""
    import hashlib
    from importlib import metadata

    import colo

    root = Path(colo.__file__).parent
    digest = hashlib.sha256(sys.version.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    for dist in SIGNED_DISTRIBUTIONS:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"\0{dist}=={version}".encode())
    return digest.hexdigest()[:16]


def exec_time_env(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` read when a process starts (:data:`~colo.launch.forkserver.EXEC_TIME_PREFIXES`)."""
    return {k: v for k, v in env.items() if k.startswith(fs.EXEC_TIME_PREFIXES)}


@dataclass(frozen=True)
class NodeInfo:
    """Who a node launcher is, as its sessions say it in their ready message (``"node"``)."""

    pid: int
    python: str
    signature: str  # :func:`code_signature` when it started
    preload: bool  # whether it imported torch and transformers (False: a test launcher)
    env: dict[str, str]  # its variables read at process start (:func:`exec_time_env`)
    started_unix: float
    socket: str
    import_secs: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> NodeInfo:
        """Raises NodeLauncherError for anything that is not a node launcher's info."""
        try:
            assert isinstance(data, dict)
            return cls(
                pid=int(data["pid"]),
                python=str(data["python"]),
                signature=str(data["signature"]),
                preload=bool(data["preload"]),
                env={str(k): str(v) for k, v in dict(data["env"]).items()},
                started_unix=float(data["started_unix"]),
                socket=str(data["socket"]),
                import_secs={str(k): float(v) for k, v in dict(data["import_secs"]).items()},
            )
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise NodeLauncherError(f"its ready message has no valid node info ({exc!r})") from exc


def unusable(info: NodeInfo, *, python: str, preload: bool, env: dict[str, str]) -> str | None:
    """Why a client running ``python`` (its launcher importing with ``preload``, in environment ``env``) must not
    fork its agents from the node launcher ``info``; None when it may."""
    if info.python != python:
        return f"it runs {info.python}, this colo runs {python}"
    if info.preload != preload:
        return "it was started " + ("with" if info.preload else "without") + " the heavy imports"
    mine = code_signature()
    if info.signature != mine:
        return (
            f"its code signature {info.signature} is not this colo's {mine} (colo, torch or transformers changed "
            "since it started: restart it)"
        )
    theirs, ours = info.env, exec_time_env(env)
    differ = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
    if differ:
        return f"it runs with other {', '.join(differ)} (read at process start)"
    return None


# --- the client side ----------------------------------------------------------------------------------------
def _peer(sock: socket.socket) -> tuple[int, int]:
    """The other end's ``(pid, uid)`` (``SO_PEERCRED``)."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


class _SocketWriter:
    """The control connection's write side, as a pipe's: ``close`` ends the stream (the session then exits)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        self._sock.close()  # the descriptor goes when the reader is closed too


class NodeSession:
    """One session of a node launcher, seen from its client: what a launcher ``Popen`` gives (``stdin``,
    ``stdout``, ``pid``, ``poll``, ``wait``, ``kill``), over the socket. ``ready`` is its ready message, already
    read; ``node`` the launcher's info in it."""

    def __init__(self, sock: socket.socket, reader: Any, ready: dict[str, Any], node: NodeInfo) -> None:
        from colo.gpu import procs

        self.stdout = reader
        self.stdin = _SocketWriter(sock)
        self.ready = ready
        self.node = node
        self.pid = int(ready["pid"])
        self._started = procs.create_time(self.pid)

    def poll(self) -> int | None:
        from colo.gpu import procs

        return None if procs.is_alive(self.pid, self._started) else 0

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"node launcher session {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return 0

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """End the session (it exits; it has forked nothing yet, or its children keep running)."""
        self.stdin.close()
        with contextlib.suppress(OSError, ValueError):
            self.stdout.close()


def connect(path: Path, timeout_secs: float = CONNECT_SECS) -> NodeSession | None:
    """A session of the node launcher listening at ``path``; None when none listens there (no such socket, or
    a stale one). Raises NodeLauncherError when something answers but not as a node launcher of this user."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        raise NodeLauncherError(f"{path} is not a socket")
    if st.st_uid != os.geteuid():
        raise NodeLauncherError(f"{path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_secs)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            return None
        _pid, uid = _peer(sock)
        if uid != os.geteuid():
            raise NodeLauncherError(f"the process listening at {path} runs as uid {uid}, not as this user")
        reader = sock.makefile("rb")
        try:
            line = reader.readline()
        except TimeoutError as exc:
            raise NodeLauncherError(f"no ready message within {timeout_secs:g} s") from exc
        try:
            ready = json.loads(line)
        except ValueError as exc:
            raise NodeLauncherError("it closed the connection" if not line else f"it sent {line[:80]!r}") from exc
        if not isinstance(ready, dict) or not ready.get("ready"):
            raise NodeLauncherError(f"it sent {line[:80]!r}, not a ready message")
        if ready.get("refused"):
            raise NodeLauncherError(f"it refused this client: {ready['refused']}")
        node = NodeInfo.from_dict(ready.get("node"))
        sock.settimeout(None)
        return NodeSession(sock, reader, ready, node)
    except OSError as exc:
        sock.close()
        raise NodeLauncherError(f"cannot talk to {path}: {exc}") from exc
    except NodeLauncherError:
        sock.close()
        raise


# --- the node launcher ----------------------------------------------------------------------------------------
def prepare_dir(path: Path) -> None:
    """Create ``path``'s directory (``0700``), or check that an existing one is this user's and private.
    Raises NodeLauncherError naming what is wrong."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.lstat()
    except OSError as exc:
        raise NodeLauncherError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise NodeLauncherError(f"{directory} is not a directory of this user (uid {os.geteuid()})")
    if st.st_mode & 0o077:
        raise NodeLauncherError(f"{directory} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); make it 0700")


def _listen(path: Path) -> socket.socket:
    """Bind and listen at ``path`` (a stale socket there is replaced; a live one is an error). Raises
    NodeLauncherError."""
    prepare_dir(path)
    try:
        held = connect(path, timeout_secs=2.0)
    except NodeLauncherError:
        held = None
    if held is not None:
        held.close()
        raise NodeLauncherError(f"a node launcher already listens at {path} (pid {held.node.pid})")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        sock.bind(str(path))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise NodeLauncherError(f"cannot listen at {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old_mask)
    return sock


_stopping: list[int] = []


def _on_stop(signum: int, frame: object) -> None:
    _stopping.append(signum)


def _reap_sessions() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _session(conn: socket.socket, spent: dict[str, float], watch: fs.DriverWatch, preload: bool, info: NodeInfo) -> int:
    """In the forked session: a process group of its own (a Ctrl-C to the node launcher is not its), then the
    launcher's loop over the connection."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fd = conn.detach()
    return fs.zygote_loop(fd, fd, spent=spent, watch=watch, preload=preload, ready_extra={"node": info.to_dict()})


def serve(path: Path, *, preload: bool = True, models_of: str | None = None) -> int:
    """Import (torch, transformers, the HTTP stack; the model classes of the config at ``models_of``), listen
    at ``path`` and fork one session per client until SIGTERM, SIGINT or SIGHUP; then remove the socket and
    exit 0 (sessions serving a client go on). 2 when it cannot listen."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    started = time.time()
    signature = code_signature()
    try:
        prepare_dir(path)
    except NodeLauncherError as exc:
        fs.say(f"node launcher: {exc}")
        return 2
    spent, watch = fs.import_all(preload=preload, models_of=models_of)
    try:
        listener = _listen(path)
    except NodeLauncherError as exc:
        fs.say(f"node launcher: {exc}")
        return 2
    own = path.lstat().st_ino
    info = NodeInfo(
        pid=os.getpid(),
        python=sys.executable,
        signature=signature,
        preload=preload,
        env=exec_time_env(dict(os.environ)),
        started_unix=started,
        socket=str(path),
        import_secs=spent,
    )
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    blocker = fs.fork_blocker()
    fs.say(
        f"node launcher ready at {path} (pid {os.getpid()}, code {signature}): imports {fs.secs_text(spent)}; "
        f"{blocker or 'single-threaded, CUDA driver not initialised'}"
    )
    try:
        while not _stopping:
            ready, _, _ = select.select([listener.fileno(), wake_r], [], [], 1.0)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            _reap_sessions()
            if listener.fileno() not in ready or _stopping:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            _serve_one(conn, listener, (wake_r, wake_w), spent, watch, preload, info)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if path.lstat().st_ino == own:
                path.unlink()
        fs.say(f"node launcher stopped ({signal.Signals(_stopping[0]).name if _stopping else 'done'})")
    return 0


def _serve_one(
    conn: socket.socket,
    listener: socket.socket,
    wake: tuple[int, int],
    spent: dict[str, float],
    watch: fs.DriverWatch,
    preload: bool,
    info: NodeInfo,
) -> None:
    """Fork a session for ``conn`` — or, for a client of another user or while forking is unsafe, tell it why
    not and close it."""
    try:
        _pid, uid = _peer(conn)
        refused = f"uid {uid} is not the node launcher's user" if uid != os.geteuid() else fs.fork_blocker()
        if refused is not None:
            fs.say(f"node launcher: refused a client: {refused}")
            message = {"ready": True, "pid": os.getpid(), "refused": refused, "node": info.to_dict()}
            conn.sendall((json.dumps(message) + "\n").encode())
            conn.close()
            return
        pid = os.fork()
    except OSError as exc:
        fs.say(f"node launcher: cannot start a session: {exc}")
        conn.close()
        return
    if pid == 0:
        code = 1
        try:
            listener.close()
            signal.set_wakeup_fd(-1)
            for fd in wake:
                os.close(fd)
            code = _session(conn, spent, watch, preload, info)
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    conn.close()


def command_line(
    path: Path, *, models_of: Path | None = None, preload: bool = True, python: str = sys.executable
) -> list[str]:
    """The node launcher's command line: listening at ``path``, importing the model classes of ``models_of``
    too (a colo.yaml), nothing heavy without ``preload`` (tests)."""
    argv = [python, "-m", MODULE, "--socket", str(path)] + ([] if preload else ["--no-preload"])
    return argv + (["--models-of", str(models_of.resolve())] if models_of is not None else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="colo's node launcher.")
    parser.add_argument("--socket", default=None, help="Where to listen (default: COLO_LAUNCHER_SOCKET or /run/colo).")
    parser.add_argument("--no-preload", action="store_true", help="Import nothing heavy (tests).")
    parser.add_argument(
        "--models-of", metavar="CONFIG", default=None, help="Also import the model classes of this colo.yaml."
    )
    args = parser.parse_args(argv)
    path = Path(args.socket) if args.socket else default_socket()
    return serve(path, preload=not args.no_preload, models_of=args.models_of)


if __name__ == "__main__":
    sys.exit(main())
