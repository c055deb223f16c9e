"""A fake MPS control program for tests (never used outside tests).

:class:`FakeMpsControl` implements :class:`colo.gpu.mps.control.MpsControl` over in-memory daemons keyed by
pipe dir. Replies follow the documented formats of ``nvidia-cuda-mps-control`` (one pid per line for
``get_server_list``/``get_client_list``, a status word for ``get_server_status``, a float for
``get_default_active_thread_percentage``, a ``PID ID SERVER DEVICE NAMESPACE COMMAND`` table for ``ps``), and
it writes ``control.log``/``server.log`` lines in the format real daemons write
(``[2026-05-31 23:48:21.671 Control 11107] NEW CLIENT 11801 from user 1000: ...``), so the log reader is
tested against the same text.

Run as a program (``python -m colo.gpu.mps.fake``, or an executable wrapper named like the real binary) it
behaves like ``nvidia-cuda-mps-control`` itself, so :class:`~colo.gpu.mps.control.SubprocessMpsControl` and the
process scan are tested end to end on CPU: ``-d`` forks a daemon that serves the same replies on a Unix socket
``<pipe dir>/control`` (its process named ``nvidia-cuda-mps-control ... -f``); without arguments it sends the
command lines read from stdin to that socket and prints the replies, or exits 1 with
``Cannot find MPS control daemon process``. ``FAKE_MPS_HANG=1`` in the daemon's environment makes it accept
connections and never answer.

Faults a test can provoke: binary missing (``binary_present=False``), a daemon that never answers
(``hang(pipe_dir)``), a stopped (SIGSTOP) daemon or server (``signal(pid, SIGSTOP)``: ``stopped(pid)`` says so,
and the daemon answers nothing until SIGCONT or SIGKILL — as a real daemon whose server is stopped), one that ignores ``quit`` (``ignore_quit(pipe_dir)``), a launcher that fails
(``fail_start``), a daemon already running from elsewhere (``add_daemon(...)``), a server FAULT (``fault``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from colo.clock import Clock
from colo.errors import MpsError
from colo.gpu.mps.control import CONTROL_BIN, DEFAULT_PIPE_DIR, PID_FILE, MpsProcess
from colo.gpu.mps.env import PIPE_DIRECTORY, VISIBLE_DEVICES, log_dir_of, pipe_dir_of

DEFAULT_LOG_DIR = "/var/log/nvidia-mps"
_SIGSTOP = int(signal.SIGSTOP)
_SIGCONT = int(signal.SIGCONT)


@dataclass
class FakeServer:
    pid: int
    uid: int
    status: str = "ACTIVE"
    clients: list[int] = field(default_factory=list)
    active_thread_pct: float = 100.0
    pinned_mem_limit: str | None = None


@dataclass
class FakeDaemon:
    pid: int
    pipe_dir: str
    log_dir: str
    visible_devices: str | None
    uid: int = 0
    alive: bool = True
    answers: bool = True
    obeys_quit: bool = True
    active_thread_pct: float = 100.0
    pinned_mem_limit: dict[str, str] = field(default_factory=dict)
    client_priority: int = 0
    servers: dict[int, FakeServer] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


def _key(path: str | Path) -> str:
    return os.path.realpath(str(path))


#: Where the fake daemons' log clock starts: 2026-11-21 18:00:00 UTC.
LOG_EPOCH = datetime(2026, 11, 21, 18, 0, 0, tzinfo=UTC).timestamp()


class LogClock:
    """The fake daemons' default clock: wall time from :data:`LOG_EPOCH`, 7 ms later at each reading (so every
    log line has its own stamp)."""

    def __init__(self) -> None:
        self._ms = 0

    def monotonic(self) -> float:
        return self._ms / 1000.0

    def wall(self) -> float:
        self._ms += 7
        return LOG_EPOCH + self._ms / 1000.0

    def sleep(self, secs: float) -> None:
        self._ms += max(round(secs * 1000.0), 0)


class FakeMpsControl:
    """In-memory MPS daemons. ``clock``'s wall time stamps the log lines (default: a :class:`LogClock`)."""

    def __init__(
        self,
        *,
        binary_present: bool = True,
        fail_start: str | None = None,
        start_unresponsive: bool = False,
        clock: Clock | None = None,
        first_pid: int = 4000,
    ) -> None:
        self.binary_present = binary_present
        self.fail_start = fail_start
        self.start_unresponsive = start_unresponsive
        self._clock: Clock = clock if clock is not None else LogClock()
        self._next_pid = first_pid
        self.daemons: dict[str, FakeDaemon] = {}
        self.signals: list[tuple[int, int]] = []
        self.sent: list[tuple[str, str]] = []
        self.reaped_calls = 0
        self.orphans: dict[int, FakeServer] = {}
        self.stopped_pids: set[int] = set()

    # --- helpers ---------------------------------------------------------------------------------------

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _log(self, d: FakeDaemon, file: str, who: str, pid: int, text: str) -> None:
        stamp = datetime.fromtimestamp(self._clock.wall(), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        Path(d.log_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(d.log_dir) / file, "a", encoding="utf-8") as fh:
            fh.write(f"[{stamp} {who} {pid:5d}] {text}\n")

    def _check_binary(self) -> None:
        if not self.binary_present:
            raise MpsError(
                f"{CONTROL_BIN} was not found on PATH",
                hint="install the NVIDIA driver's compute utilities (nvidia-compute-utils)",
            )

    def _live(self, pipe_dir: str | Path) -> FakeDaemon | None:
        d = self.daemons.get(_key(pipe_dir))
        return d if d is not None and d.alive else None

    def daemon_at(self, pipe_dir: str | Path) -> FakeDaemon:
        """The (live) fake daemon of ``pipe_dir``. Raises KeyError."""
        d = self._live(pipe_dir)
        if d is None:
            raise KeyError(str(pipe_dir))
        return d

    # --- MpsControl -------------------------------------------------------------------------------------

    def start_daemon(self, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> None:
        self._check_binary()
        if self.fail_start is not None:
            raise MpsError(f"`{CONTROL_BIN} -d` exited with status 1: {self.fail_start}")
        pipe = pipe_dir_of(env) or DEFAULT_PIPE_DIR
        log = log_dir_of(env) or DEFAULT_LOG_DIR
        if self._live(pipe) is not None:
            raise MpsError(f"`{CONTROL_BIN} -d` exited with status 1: An instance of this daemon is already running")
        old = self.daemons.get(_key(pipe))
        d = self.add_daemon(pipe, log, env.get(VISIBLE_DEVICES))
        d.answers = not self.start_unresponsive
        if old is not None:
            self.orphans.update(old.servers)  # a dead daemon's servers outlive it, until signalled

    def add_daemon(
        self,
        pipe_dir: str | Path,
        log_dir: str | Path,
        visible_devices: str | None = None,
        *,
        uid: int = 0,
        pid: int | None = None,
    ) -> FakeDaemon:
        """A daemon as ``nvidia-cuda-mps-control -d`` would leave it (also: one "started elsewhere")."""
        d = FakeDaemon(pid or self._pid(), str(pipe_dir), str(log_dir), visible_devices, uid)
        self.daemons[_key(pipe_dir)] = d
        Path(pipe_dir).mkdir(parents=True, exist_ok=True)
        (Path(pipe_dir) / "control").touch()
        (Path(pipe_dir) / PID_FILE).write_text(f"{d.pid}\n")
        self._log(d, "control.log", "Control", d.pid, f"Starting control daemon using socket {pipe_dir}/control")
        self._log(
            d,
            "control.log",
            "Control",
            d.pid,
            f"To connect CUDA applications to this daemon, set env {PIPE_DIRECTORY}={pipe_dir}",
        )
        self._log(d, "control.log", "Control", d.pid, "CUDA MPS Control binary version: 13000")
        return d

    def send(self, command: str, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> str:
        self._check_binary()
        pipe = pipe_dir_of(env) or DEFAULT_PIPE_DIR
        self.sent.append((pipe, command))
        d = self._live(pipe)
        if d is None:
            raise MpsError(
                f"{CONTROL_BIN} exited with status 1 for {command!r} in {pipe}: Cannot find MPS control daemon process"
            )
        if not d.answers or self._stuck(d):
            raise MpsError(f"the MPS control daemon in {pipe} did not answer {command!r} within {timeout_secs:g} s")
        d.commands.append(command)
        self._log(d, "control.log", "Control", d.pid, "Accepting connection...")
        self._log(d, "control.log", "Control", d.pid, "NEW UI")
        self._log(d, "control.log", "Control", d.pid, f"Cmd:{command}")
        reply = self._run(d, command.split())
        self._log(d, "control.log", "Control", d.pid, "UI closed")
        return reply

    def _run(self, d: FakeDaemon, argv: list[str]) -> str:
        cmd, args = (argv[0], argv[1:]) if argv else ("", [])
        if cmd == "get_server_list":
            return "".join(f"{pid}\n" for pid in d.servers)
        if cmd == "get_server_status" and args:
            s = d.servers.get(int(args[0]))
            return f"{s.status}\n" if s else "Server not found\n"
        if cmd == "get_client_list" and args:
            s = d.servers.get(int(args[0]))
            return "".join(f"{c}\n" for c in s.clients) if s else ""
        if cmd == "ps":
            lines = ["PID ID SERVER DEVICE NAMESPACE COMMAND"]
            for s in d.servers.values():
                for i, c in enumerate(s.clients):
                    dev = (d.visible_devices or "GPU-00000000-0000")[:22]
                    lines.append(f"{c:5d} {i:3d} {s.pid:6d} {dev} 4026531836 python3 agent.py")
            return "\n".join(lines) + "\n"
        if cmd == "get_default_active_thread_percentage":
            return f"{d.active_thread_pct:.1f}\n"
        if cmd == "set_default_active_thread_percentage" and args:
            d.active_thread_pct = float(args[0])
            return f"{d.active_thread_pct:.1f}\n"
        if cmd == "set_default_device_pinned_mem_limit" and len(args) == 2:
            d.pinned_mem_limit[args[0]] = args[1]
            return ""
        if cmd == "set_default_client_priority" and args:
            d.client_priority = int(args[0])
            return ""
        if cmd == "terminate_client" and len(args) == 2:
            s = d.servers.get(int(args[0]))
            client = int(args[1])
            if s is None or client not in s.clients:
                return "Client not found\n"
            s.clients.remove(client)
            self._log(d, "server.log", "Server", s.pid, f"Client {{PID: {client}, Context ID: 0}} terminated")
            return ""
        if cmd == "quit":
            if d.obeys_quit:
                self._quit(d)
            return ""
        return f"Unrecognized command {cmd}\n"

    def _quit(self, d: FakeDaemon) -> None:
        for s in list(d.servers.values()):
            self._log(d, "server.log", "Server", s.pid, "Server shutting down")
            self._log(d, "control.log", "Control", d.pid, f"Server {s.pid} exited with status 0")
        d.servers.clear()
        self._log(d, "control.log", "Control", d.pid, "Exit")
        self._gone(d)

    def _gone(self, d: FakeDaemon) -> None:
        d.alive = False
        for name in ("control", PID_FILE):
            (Path(d.pipe_dir) / name).unlink(missing_ok=True)

    def find_processes(self, pipe_dir: Path | None = None) -> list[MpsProcess]:
        out: list[MpsProcess] = []
        for d in self.daemons.values():
            if pipe_dir is not None and _key(pipe_dir) != _key(d.pipe_dir):
                continue
            if d.alive:  # a killed daemon's servers still run (and are listed) until signalled themselves
                out.append(MpsProcess(d.pid, "control", d.pipe_dir, d.visible_devices, d.uid, (CONTROL_BIN, "-d")))
            for s in d.servers.values():
                out.append(
                    MpsProcess(s.pid, "server", d.pipe_dir, d.visible_devices, s.uid, ("nvidia-cuda-mps-server",))
                )
        return sorted(out, key=lambda p: p.pid)

    def _stuck(self, d: FakeDaemon) -> bool:
        """The daemon or one of its servers is stopped: the daemon answers nothing."""
        return d.pid in self.stopped_pids or any(pid in self.stopped_pids for pid in d.servers)

    def stopped(self, pid: int) -> bool:
        return pid in self.stopped_pids and self.alive(pid)

    def signal(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))
        if sig == _SIGSTOP:
            if self.alive(pid):
                self.stopped_pids.add(pid)
            return
        if sig == _SIGCONT:
            self.stopped_pids.discard(pid)
            return
        self.stopped_pids.discard(pid)
        if self.orphans.pop(pid, None) is not None:
            return
        for d in self.daemons.values():
            if d.alive and d.pid == pid:
                self._gone(d)  # servers of a killed daemon linger until signalled themselves
                return
            if pid in d.servers:
                del d.servers[pid]
                return

    def alive(self, pid: int) -> bool:
        return pid in self.orphans or any((d.alive and d.pid == pid) or pid in d.servers for d in self.daemons.values())

    def start_time(self, pid: int) -> float | None:
        # Pids are never reused here: a fixed start time per pid.
        return 1_700_000_000.0 + pid if self.alive(pid) else None

    def reap(self) -> list[int]:
        self.reaped_calls += 1
        return []

    # --- what clients and faults do (tests drive these) ---------------------------------------------------

    def connect_client(self, pipe_dir: str | Path, client_pid: int, *, uid: int = 0) -> int:
        """A CUDA client connects: the daemon starts a server (with its defaults) if none; the server pid."""
        d = self.daemon_at(pipe_dir)
        server = next(iter(d.servers.values()), None)
        if server is None:
            self._log(
                d,
                "control.log",
                "Control",
                d.pid,
                f"NEW CLIENT {client_pid} from user {uid}: Server is not ready, push client to pending list",
            )
            spid = self._pid()
            server = FakeServer(spid, uid, "ACTIVE", [], d.active_thread_pct, d.pinned_mem_limit.get("0"))
            d.servers[spid] = server
            self._log(d, "control.log", "Control", spid, f"Starting new server {spid} for user {uid}")
            self._log(d, "server.log", "Server", spid, f"Active Threads Percentage set to {d.active_thread_pct:.1f}")
            self._log(d, "server.log", "Server", spid, "Server has started")
            self._log(d, "control.log", "Control", d.pid, f"NEW SERVER {spid}: Ready")
        else:
            self._log(
                d,
                "control.log",
                "Control",
                d.pid,
                f"NEW CLIENT {client_pid} from user {uid}: Server already exists",
            )
        server.clients.append(client_pid)
        self._log(d, "server.log", "Server", server.pid, f"Client {{PID: {client_pid}, Context ID: 0}} connected")
        return server.pid

    def disconnect_client(self, pipe_dir: str | Path, client_pid: int) -> None:
        """A client process exits."""
        d = self.daemon_at(pipe_dir)
        for s in d.servers.values():
            if client_pid in s.clients:
                s.clients.remove(client_pid)
                self._log(
                    d,
                    "server.log",
                    "Server",
                    s.pid,
                    f"Client {{PID: {client_pid}, Context ID: 0}} disconnected",
                )
                if s.status == "FAULT" and not s.clients:
                    s.status = "ACTIVE"
                return

    def fault(self, pipe_dir: str | Path) -> int:
        """A fatal GPU exception in a client: the server goes FAULT until its clients have exited."""
        d = self.daemon_at(pipe_dir)
        s = next(iter(d.servers.values()))
        s.status = "FAULT"
        self._log(d, "server.log", "Server", s.pid, "Server encountered a fatal exception. Shutting down")
        return s.pid

    def kill_server(self, pipe_dir: str | Path) -> int:
        """The server process dies (SIGKILL): gone from the daemon's list; its clients stay alive. Its pid."""
        d = self.daemon_at(pipe_dir)
        s = next(iter(d.servers.values()))
        del d.servers[s.pid]
        self._log(d, "control.log", "Control", d.pid, f"Server {s.pid} exited with status 9")
        return s.pid

    def kill_daemon(self, pipe_dir: str | Path) -> int:
        """The control daemon dies (SIGKILL): its servers keep running (as real MPS's do). Its pid."""
        d = self.daemon_at(pipe_dir)
        self._gone(d)
        return d.pid

    def hang(self, pipe_dir: str | Path) -> None:
        """The daemon stops answering anything (it still runs until signalled)."""
        self.daemon_at(pipe_dir).answers = False

    def ignore_quit(self, pipe_dir: str | Path) -> None:
        """The daemon answers ``quit`` but does not exit."""
        self.daemon_at(pipe_dir).obeys_quit = False


# --- the program ------------------------------------------------------------------------------------------


def _set_process_name(name: str) -> None:
    """Linux ``comm`` (15 bytes), as the real binary's process shows in ``ps``; best effort."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _serve(pipe_dir: str, log_dir: str) -> int:
    """The daemon: one command per connection on ``<pipe_dir>/control``; ``quit`` ends it."""
    import socket
    import time

    _set_process_name(CONTROL_BIN)
    fake = FakeMpsControl()
    d = fake.add_daemon(pipe_dir, log_dir, os.environ.get("CUDA_VISIBLE_DEVICES"), pid=os.getpid())
    path = Path(pipe_dir) / "control"
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    hang = os.environ.get("FAKE_MPS_HANG") == "1"
    try:
        while d.alive:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if hang:
                    time.sleep(3600)
                    continue
                reply = fake._run(d, data.decode().split())
                conn.sendall(reply.encode())
    finally:
        srv.close()
        path.unlink(missing_ok=True)
        (Path(pipe_dir) / PID_FILE).unlink(missing_ok=True)
    return 0


def _client(pipe_dir: str, lines: list[str]) -> int:
    import socket
    import sys

    path = Path(pipe_dir) / "control"
    for line in lines:
        if not line.strip():
            continue
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                s.sendall(line.strip().encode() + b"\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
        except OSError:
            sys.stdout.write("Cannot find MPS control daemon process\n")
            return 1
        sys.stdout.write(reply.decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    """``nvidia-cuda-mps-control [-d|-f]``, imitated (tests only)."""
    import subprocess
    import sys

    args = sys.argv[1:] if argv is None else argv
    pipe_dir = pipe_dir_of(os.environ) or DEFAULT_PIPE_DIR
    log_dir = log_dir_of(os.environ) or DEFAULT_LOG_DIR
    if "-d" in args:
        pid_file = Path(pipe_dir) / PID_FILE
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().strip() or "0")
                if pid > 0:
                    os.kill(pid, 0)
                    sys.stdout.write("An instance of this daemon is already running\n")
                    return 1
            except (OSError, ValueError):
                pass  # stale: the daemon was killed
        Path(pipe_dir).mkdir(parents=True, exist_ok=True)
        subprocess.Popen(
            [CONTROL_BIN, "-m", "colo.gpu.mps.fake", "-f"],
            executable=sys.executable,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # argv[0] is not a path to Python, so the child cannot find this venv by itself.
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        )
        # Like the real one, return once the daemon can be reached.
        import time

        deadline = time.monotonic() + 10.0
        while not (Path(pipe_dir) / "control").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0
    if "-f" in args:
        return _serve(pipe_dir, log_dir)
    return _client(pipe_dir, sys.stdin.read().splitlines())


if __name__ == "__main__":
    raise SystemExit(main())
