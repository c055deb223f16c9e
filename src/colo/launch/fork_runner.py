""":class:`ForkRunner`: the :class:`~colo.launch.runner.Runner` that forks built-in agents from the
pre-imported launcher (:mod:`colo.launch.forkserver`) and spawns everything else.

Only built-in agents run by this interpreter are forked; ``command:`` agents, and built-in agents whose ``env``
changes a variable read at process start (``PYTHON*``, ``LD_*``, thread-pool sizes such as ``OMP_NUM_THREADS``;
the zygote already started with its own), are spawned plainly. The first forkable spawn starts the zygote and
waits for its imports. If the zygote dies, its children are followed by pid and start time (exit status unknown,
like an adopted process), new agents are spawned plainly, and a replacement is started (at most
:data:`MAX_RESTARTS` times). :func:`make_runner` turns ``policy.launcher`` into a runner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from colo.errors import SupervisorError
from colo.gpu import procs
from colo.launch import node_launcher, prestart
from colo.launch.forkserver import EXEC_TIME_PREFIXES
from colo.launch.runner import ExitStatus, LaunchSpec, ProcessHandle, ProcessRunner, Runner
from colo.modelserver.command import MODULE as BUILTIN_AGENT_MODULE
from colo.modelserver.startup import launch_env

log = logging.getLogger("colo.launch.fork_runner")

Launcher = Literal["fork", "spawn"]

#: How long the first spawn waits for a starting zygote's imports before spawning plainly.
READY_WAIT_SECS = 60.0
#: How long a fork request may take before the zygote counts as hung (and plain spawning takes over). The
#: first request for a config also imports its model classes in the zygote (seconds).
FORK_REPLY_SECS = 60.0
#: Zygotes started after the first one died, at most: past this, every agent is spawned plainly.
MAX_RESTARTS = 3
#: ``ProcessHandle.launch`` of a forked agent (a spawned one says ``spawned: <why not forked>``; one forked from a
#: node launcher's session says which launcher after it).
FORKED = "forked from the launcher"


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _Reader(Protocol):
    def __iter__(self) -> Any: ...
    def close(self) -> None: ...


class _LauncherProcess(Protocol):
    """What the runner uses of a launcher: a ``Popen`` of its own, or a node launcher's session
    (:class:`~colo.launch.node_launcher.NodeSession`)."""

    @property
    def pid(self) -> int: ...
    @property
    def stdin(self) -> _Writer | None: ...
    @property
    def stdout(self) -> _Reader | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


class _ZygoteGone(Exception):
    """The zygote has exited or stopped answering."""


class _Refused(Exception):
    """The zygote answered but would not fork this request (its reason is the message)."""


@dataclass
class _Zygote:
    """One running zygote process as seen from the orchestrator (a reader thread collects its messages)."""

    proc: _LauncherProcess
    env: dict[str, str]
    first: bool  # the first zygote of its runner: spawns wait for its imports
    ready: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    import_secs: dict[str, float] = field(default_factory=dict)
    blocker: str | None = None  # why the zygote may not fork, as it said when ready
    ready_info: dict[str, Any] = field(default_factory=dict)  # its whole ready message (driver state, ...)
    exits: dict[int, ExitStatus] = field(default_factory=dict)
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    next_id: int = 0

    def read_forever(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self.cond:
                if msg.get("ready"):
                    self.take_ready(msg)
                elif "exit" in msg:
                    sig = msg.get("signal")
                    self.exits[int(msg["exit"])] = ExitStatus(code=msg.get("code"), signal=sig)
                elif msg.get("id") is not None:
                    if "pid" in msg:
                        # The zygote sends a child's pid before it can reap and report that child, so an exit
                        # already stored for this pid is a stale one of an earlier child with the same pid.
                        # Dropped here, under the reader's lock — not after fork() returns, when the new
                        # child's own exit may already have arrived (a child that exits at once).
                        self.exits.pop(int(msg["pid"]), None)
                    self.replies[int(msg["id"])] = msg
                self.cond.notify_all()
        # EOF: every message the zygote sent has been read; only now may its children be tracked by pid.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)  # reaped: no zombie zygote
        for pipe in (self.proc.stdout, self.proc.stdin):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()
        with self.cond:
            self.gone.set()
            self.ready.set()
            self.cond.notify_all()

    def take_ready(self, msg: dict[str, Any]) -> None:
        """The zygote's ready message (read here, or by :func:`~colo.launch.node_launcher.connect`)."""
        self.import_secs = dict(msg.get("import_secs") or {})
        self.blocker = msg.get("blocker")
        self.ready_info = dict(msg)
        self.ready.set()

    def fork(self, argv: Sequence[str], env: dict[str, str], cwd: str | None, log_path: Path) -> int:
        """Ask for a child; its pid. Raises _ZygoteGone when the zygote is gone or hung, _Refused when it
        answers with an error."""
        with self.cond:
            if self.gone.is_set():
                raise _ZygoteGone("the launcher has exited")
            self.next_id += 1
            rid = self.next_id
            line = json.dumps({"id": rid, "argv": list(argv), "env": env, "cwd": cwd, "log": str(log_path)})
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise _ZygoteGone(f"the launcher's pipe is closed: {exc}") from exc
            ok = self.cond.wait_for(lambda: rid in self.replies or self.gone.is_set(), FORK_REPLY_SECS)
            reply = self.replies.pop(rid, None)
        if reply is None:
            raise _ZygoteGone("the launcher did not answer" if not ok else "the launcher has exited")
        if "error" in reply:
            raise _Refused(str(reply["error"]))
        return int(reply["pid"])

    def tell_log(self, path: Path) -> None:
        """Have the zygote log to ``path`` from now on (it answers nothing). Raises _ZygoteGone."""
        with self.cond:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"log_to": str(path.absolute())}).encode() + b"\n")
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise _ZygoteGone(f"the launcher's pipe is closed: {exc}") from exc

    def close(self, wait_secs: float = 5.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if not self.ready.is_set():  # still importing (it reads its pipe only after): nothing forked, ended now
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=wait_secs)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def is_builtin_agent(spec: LaunchSpec, python: str = sys.executable) -> bool:
    """Whether ``spec`` runs colo's built-in agent with this interpreter (the only thing the zygote forks)."""
    return len(spec.argv) >= 3 and spec.argv[0] == python and tuple(spec.argv[1:3]) == ("-m", BUILTIN_AGENT_MODULE)


class ForkRunner:
    """A :class:`~colo.launch.runner.Runner` that forks built-in agents from a pre-imported zygote and
    spawns everything else (and everything while no zygote is usable) with ``fallback``.

    ``forkable`` picks the specs to fork (default: :func:`is_builtin_agent`); ``preload=False`` starts a zygote
    that imports nothing heavy (tests). The zygote starts on the first forkable spawn, which waits for its
    imports (up to ``ready_wait_secs``); a zygote that dies is replaced in the background while spawns go to
    ``fallback``, at most ``max_restarts`` times. With ``node_socket``, a node launcher listening there
    (:mod:`colo.launch.node_launcher`, already imported) gives the zygote whenever it answers and suits this
    runner; else one is started as above.
    """

    def __init__(
        self,
        *,
        fallback: Runner | None = None,
        forkable: Callable[[LaunchSpec], bool] | None = None,
        preload: bool = True,
        ready_wait_secs: float = READY_WAIT_SECS,
        max_restarts: int = MAX_RESTARTS,
        python: str = sys.executable,
        node_socket: Path | None = None,
    ) -> None:
        self.fallback: Runner = fallback or ProcessRunner()
        self._forkable = forkable or (lambda spec: is_builtin_agent(spec, python))
        self._preload = preload
        self._ready_wait_secs = ready_wait_secs
        self._restarts_left = max_restarts
        self._python = python
        self._node_socket = node_socket
        self.node: node_launcher.NodeInfo | None = None  # the node launcher the current zygote is a session of
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._log_dir: Path | None = None
        self._models_of: Path | None = None  # a colo.yaml whose model classes the zygote imports at its start
        self._forked: dict[int, _Zygote] = {}  # pid -> the zygote that forked it
        self.forks = 0
        self.fallbacks: list[str] = []  # why each forkable spec was spawned plainly

    # --- Runner ---------------------------------------------------------------------------------------
    def spawn(self, spec: LaunchSpec, log_path: Path) -> ProcessHandle:
        if not self._forkable(spec):
            return self.fallback.spawn(spec, log_path)
        requested = time.monotonic()  # the agent's start phases count from here, whichever way it starts
        env = prestart.launcher_env()  # as in the zygote's own environment
        env.update(launch_env("fork", requested))
        env.update(spec.env_dict())
        zygote, reason = self._usable_zygote(log_path.parent)
        if zygote is not None:
            reason = self._unforkable_env(zygote, env) or ""
            if not reason:
                try:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    pid = zygote.fork(spec.argv, env, spec.cwd, log_path.absolute())
                except _Refused as exc:
                    reason = str(exc)
                except _ZygoteGone as exc:
                    reason = str(exc)
                    if not zygote.gone.is_set():  # hung: replace it
                        self._retire(zygote)
                else:
                    with self._lock:
                        self._forked[pid] = zygote
                        self.forks += 1
                    start = procs.create_time(pid)
                    node = self.node
                    launch = FORKED if node is None else f"{FORKED} (a session of the node launcher, pid {node.pid})"
                    return ProcessHandle(pid, start if start is not None else 0.0, launch=launch)
        self.fallbacks.append(reason)
        log.info("spawning %s plainly: %s", spec.argv[0], reason)
        spawned = replace(spec, env=tuple(sorted({**dict(spec.env), **launch_env("spawn", requested)}.items())))
        return replace(self.fallback.spawn(spawned, log_path), launch=f"spawned: {reason}")

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        with self._lock:
            zygote = self._forked.get(handle.pid)
        if zygote is None:
            return self.fallback.poll(handle)
        with zygote.cond:
            status = zygote.exits.pop(handle.pid, None)
        if status is None and not zygote.gone.is_set():
            return None
        if status is None and procs.is_alive(handle.pid, handle.start_time or None):
            return None  # orphaned by a dead zygote: alive by pid and start time
        with self._lock:
            self._forked.pop(handle.pid, None)
        return status or ExitStatus()

    def signal(self, handle: ProcessHandle, sig: int) -> None:
        with self._lock:
            zygote = self._forked.get(handle.pid)
        if zygote is not None:
            with zygote.cond:
                if handle.pid in zygote.exits:
                    return  # ended (not yet polled): its pid may not be signalled
            if not zygote.gone.is_set():
                # A child of the live zygote, session leader of its own group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(handle.pid, sig)
                return
        self.fallback.signal(handle, sig)

    def adopt(self, pid: int, start_time: float) -> ProcessHandle | None:
        return self.fallback.adopt(pid, start_time)

    # --- the zygote -------------------------------------------------------------------------------------
    def start(self, log_dir: Path, *, models_of: Path | None = None) -> None:
        """Start the zygote now (its imports run in the background), logging to ``log_dir/forkserver.log``;
        ``models_of``: a colo.yaml whose model classes it imports too before it is ready (and again whenever it
        is restarted), so the agents it forks first do not each import their own. A launcher that the console
        script started for exactly this (:mod:`colo.launch.prestart`) is taken over instead of starting one."""
        with self._lock:
            if models_of is not None:
                self._models_of = models_of
            if self._zygote is None or self._zygote.gone.is_set():
                node = self._node_zygote(log_dir)
                if node is not None:
                    prestart.discard()  # the console script's own launcher is not needed
                self._zygote = node or self._adopt_prestarted(log_dir) or self._start_zygote(log_dir)

    def wait_ready(self, timeout_secs: float) -> bool:
        """Wait until the zygote (started by :meth:`start` or a spawn) has done its imports; False if it
        is not ready (or gone) by then."""
        deadline = time.monotonic() + timeout_secs
        while time.monotonic() < deadline:
            z = self._zygote
            if z is not None and z.ready.wait(0.05):
                return not z.gone.is_set()
            if z is None:
                time.sleep(0.05)
        return False

    def import_secs(self) -> dict[str, float]:
        """Seconds the current zygote spent importing, per step (empty before it is ready)."""
        z = self._zygote
        return dict(z.import_secs) if z is not None else {}

    def ready_info(self) -> dict[str, Any]:
        """The current zygote's ready message: ``import_secs``, ``blocker`` (why it will not fork, or None),
        ``driver`` (the CUDA driver's state after its imports), ``libcuda_mapped_by`` (the import step that
        mapped libcuda, or None); empty before it is ready."""
        z = self._zygote
        return dict(z.ready_info) if z is not None else {}

    def close(self) -> None:
        """Stop the zygote (its children keep running)."""
        with self._lock:
            z, self._zygote = self._zygote, None
        if z is not None:
            z.close()

    def _usable_zygote(self, log_dir: Path) -> tuple[_Zygote | None, str]:
        """The zygote to fork from, or None and why not."""
        with self._lock:
            z = self._zygote
            first = self._log_dir is None
            if z is None or z.gone.is_set():
                if not first and self._restarts_left <= 0:
                    return None, "the launcher died too often"
                if not first:
                    self._restarts_left -= 1
                z = self._zygote = self._node_zygote(log_dir) or self._start_zygote(log_dir)
                if z is None:
                    return None, "the launcher cannot start"
        # Only the very first zygote is waited for: after a death, agents are spawned plainly until the
        # replacement is ready, so recovery never waits for imports twice.
        if z.first:
            z.ready.wait(self._ready_wait_secs)
        if z.gone.is_set():
            return None, "the launcher exited (see forkserver.log)"
        if not z.ready.is_set():
            return None, "the launcher is still importing"
        if z.blocker:
            return None, z.blocker
        return z, ""

    def _node_zygote(self, log_dir: Path) -> _Zygote | None:
        """A session of the node launcher at ``node_socket``, logging to ``log_dir/forkserver.log`` from now on;
        None when none answers there or it does not suit this runner (said in colo's log, once per try)."""
        self.node = None
        if self._node_socket is None:
            return None
        try:
            session = node_launcher.connect(self._node_socket)
        except node_launcher.NodeLauncherError as exc:
            log.warning("not forking from the node launcher at %s: %s", self._node_socket, exc)
            return None
        if session is None:
            return None
        why = node_launcher.unusable(
            session.node, python=self._python, preload=self._preload, env=prestart.launcher_env()
        )
        if why is None and session.ready.get("blocker"):
            why = str(session.ready["blocker"])
        if why is not None:
            log.warning(
                "not forking from the node launcher at %s (pid %d): %s", self._node_socket, session.node.pid, why
            )
            session.close()
            return None
        first = self._log_dir is None
        self._log_dir = log_dir
        z = _Zygote(session, dict(session.node.env), first)
        z.take_ready(session.ready)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            z.tell_log(log_dir / "forkserver.log")
        except (OSError, _ZygoteGone) as exc:
            log.warning("the node launcher's session cannot log to %s (%s); not forking from it", log_dir, exc)
            session.close()
            return None
        self.node = session.node
        log.info(
            "forking agents from the node launcher at %s (pid %d, session %d)",
            self._node_socket,
            session.node.pid,
            session.pid,
        )
        return self._follow(z)

    def _start_zygote(self, log_dir: Path) -> _Zygote | None:
        first = self._log_dir is None
        self._log_dir = log_dir
        env = prestart.launcher_env()
        argv = prestart.launcher_argv(self._python, preload=self._preload, models_of=self._models_of)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / "forkserver.log", "ab") as out:
                proc = prestart.popen_launcher(argv, env, out.fileno())
        except OSError as exc:
            log.warning("cannot start the launcher (%s); agents are spawned plainly", exc)
            return None
        return self._follow(_Zygote(proc, env, first))

    def _adopt_prestarted(self, log_dir: Path) -> _Zygote | None:
        """The launcher the console script started for this very command line and environment, told to log to
        ``log_dir/forkserver.log`` from now on; None when there is none (or it is gone)."""
        held = prestart.claim(
            prestart.launcher_argv(self._python, preload=self._preload, models_of=self._models_of),
            prestart.launcher_env(),
        )
        if held is None:
            return None
        first = self._log_dir is None
        self._log_dir = log_dir
        z = _Zygote(held.proc, held.env, first)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            z.tell_log(log_dir / "forkserver.log")
        except (OSError, _ZygoteGone) as exc:
            log.warning("the early launcher cannot be taken over (%s); starting another", exc)
            z.close()
            with contextlib.suppress(OSError):
                held.early_log.unlink()
            return None
        log.info("took over the launcher started with the command (pid %d)", held.proc.pid)
        return self._follow(z)

    @staticmethod
    def _follow(z: _Zygote) -> _Zygote:
        threading.Thread(target=z.read_forever, name="colo-forkserver-reader", daemon=True).start()
        return z

    def _retire(self, zygote: _Zygote) -> None:
        with self._lock:
            if self._zygote is zygote:
                self._zygote = None
        threading.Thread(target=zygote.close, name="colo-forkserver-close", daemon=True).start()

    @staticmethod
    def _unforkable_env(zygote: _Zygote, env: dict[str, str]) -> str | None:
        keys = {k for k in (*env, *zygote.env) if k.startswith(EXEC_TIME_PREFIXES)}
        differ = sorted(k for k in keys if env.get(k) != zygote.env.get(k))
        return f"env sets {', '.join(differ)} (read at process start)" if differ else None


def make_runner(launcher: Launcher) -> Runner:
    """The runner for ``policy.launcher``: ``fork`` (built-in agents from the zygote) or ``spawn``."""
    if launcher == "fork":
        return ForkRunner(node_socket=node_launcher.default_socket())
    if launcher == "spawn":
        return ProcessRunner()
    raise SupervisorError(f"unknown launcher {launcher!r}", hint="policy.launcher is fork or spawn")
