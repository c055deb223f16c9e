"""Spawning, polling and signalling agent processes, behind the narrow :class:`Runner` Protocol.

:class:`ProcessRunner` is the real one: each agent gets its own session (so a Ctrl-C to ``colo up`` reaches
colo, not the agents, and a stop signal reaches the agent's whole process group), its stdout and stderr go
straight to its log file (so agents outlive an orchestrator that is SIGKILLed), and a process is identified
by pid **and** start time, so an orchestrator started again re-adopts its agents without mistaking a reused
pid for one of them. :class:`FakeRunner` beside it lets tests script exits and signals with no processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from colo.errors import SupervisorError
from colo.gpu import procs
from colo.modelserver.startup import launch_env


@dataclass(frozen=True)
class ProcessHandle:
    """A process colo launched or adopted: its pid and start time (seconds since the epoch), and how it was
    launched (``launch``: ``"forked from the launcher"``, ``"spawned"``, ``"spawned: <why not forked>"``)."""

    pid: int
    start_time: float
    adopted: bool = False
    launch: str = ""


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit ``code``, or the ``signal`` that killed it; both None when unknown."""

    code: int | None = None
    signal: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.code == 0 and self.signal is None

    def describe(self) -> str:
        """``"exit code 1"``, ``"signal SIGKILL"``, or ``"exit status unknown"``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"signal {name}"
        if self.code is not None:
            return f"exit code {self.code}"
        return "exit status unknown (adopted process)"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything that defines how an agent's process is started. Two equal specs = no restart needed."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # colo's additions to the inherited environment, sorted
    cwd: str | None
    gpu: str | None  # GpuSlot.key
    gpu_uuid: str | None
    limit_bytes: int

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def mps_client(self) -> bool:
        """Started as an MPS client (its environment names a daemon's pipe dir): its GPU runs MPS for it."""
        from colo.gpu.mps.env import pipe_dir_of

        return pipe_dir_of(self.env_dict()) is not None

    def fingerprint(self) -> str:
        """A stable short hash of the spec (kept in the store to notice changes across restarts)."""
        import hashlib
        import json

        blob = json.dumps(
            [
                list(self.argv),
                [list(kv) for kv in self.env],
                self.cwd,
                self.gpu,
                self.gpu_uuid,
                self.limit_bytes,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Runner(Protocol):
    """The OS side of running agents."""

    def spawn(self, spec: LaunchSpec, log_path: Path) -> ProcessHandle:
        """Start ``spec`` with output appended to ``log_path``. Raises SupervisorError if it cannot start."""
        ...

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        """None while the process runs; its ExitStatus once it has ended (reaped if it is our child)."""
        ...

    def signal(self, handle: ProcessHandle, sig: int) -> None:
        """Send ``sig`` to the process's group (or the process). A process already gone is not an error."""
        ...

    def adopt(self, pid: int, start_time: float) -> ProcessHandle | None:
        """A handle for a live process with this pid and start time, or None if it is gone or reused."""
        ...

    def close(self) -> None:
        """Release what the runner itself holds (a launcher process); the agents keep running."""
        ...


def base_env() -> dict[str, str]:
    """The orchestrator's environment minus any MPS settings of the shell it was started from: colo sets those."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CUDA_MPS_")}


class ProcessRunner:
    """Real processes via ``subprocess`` (children) and ``colo.gpu.procs`` (adopted processes)."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, spec: LaunchSpec, log_path: Path) -> ProcessHandle:
        env = base_env()
        env.update(launch_env("spawn", time.monotonic()))  # unless a ForkRunner falling back set them first
        env.update(spec.env_dict())
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    list(spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=spec.cwd,
                    start_new_session=True,
                    close_fds=True,
                )
        except (OSError, ValueError) as exc:
            raise SupervisorError(
                f"cannot start {spec.argv[0]!r}: {getattr(exc, 'strerror', None) or exc}",
                hint="check the agent's command (is it installed and on PATH?) and cwd",
            ) from exc
        self._children[proc.pid] = proc
        start = procs.create_time(proc.pid)
        # None: exited already; poll() reports how
        return ProcessHandle(proc.pid, start if start is not None else 0.0, launch="spawned")

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        child = self._children.get(handle.pid)
        if child is not None:
            rc = child.poll()
            if rc is None:
                return None
            del self._children[handle.pid]
            return ExitStatus(signal=-rc) if rc < 0 else ExitStatus(code=rc)
        return None if self._alive(handle) else ExitStatus()

    def _alive(self, handle: ProcessHandle) -> bool:
        return procs.is_alive(handle.pid, handle.start_time)

    def signal(self, handle: ProcessHandle, sig: int) -> None:
        if handle.pid not in self._children and not self._alive(handle):
            return
        try:
            if os.getpgid(handle.pid) == handle.pid:
                os.killpg(handle.pid, sig)
                return
        except (ProcessLookupError, PermissionError):
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(handle.pid, sig)

    def adopt(self, pid: int, start_time: float) -> ProcessHandle | None:
        handle = ProcessHandle(pid, start_time, adopted=True)
        return handle if pid > 0 and self._alive(handle) else None

    def close(self) -> None:
        """Nothing to release: each agent is a plain child."""


@dataclass
class FakeProcess:
    """A pretend process in :class:`FakeRunner`."""

    handle: ProcessHandle
    spec: LaunchSpec
    exit: ExitStatus | None = None
    signals: list[int] = field(default_factory=list)


class FakeRunner:
    """A :class:`Runner` for tests: no processes; the test decides when each one exits.

    By default a process exits with the signal it is sent (as a well-behaved agent would). Put a pid in
    ``ignore_signals`` to make it ignore everything but SIGKILL. ``fail_argv0`` makes spawn fail for a
    command. ``launch`` is what the next handles say of how they were launched (a real runner's
    ``ProcessHandle.launch``).
    """

    def __init__(self, *, first_pid: int = 4000, clock_wall: float = 1_700_000_000.0) -> None:
        self.procs: dict[int, FakeProcess] = {}
        self.spawned: list[FakeProcess] = []
        self.ignore_signals: set[int] = set()
        self.fail_argv0: set[str] = set()
        self.launch = ""
        self._next_pid = first_pid
        self._wall = clock_wall

    def spawn(self, spec: LaunchSpec, log_path: Path) -> ProcessHandle:
        if spec.argv[0] in self.fail_argv0:
            raise SupervisorError(f"cannot start {spec.argv[0]!r}: No such file or directory")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()  # as the real runner opens it for the child's output
        pid = self._next_pid
        self._next_pid += 1
        self._wall += 1.0
        proc = FakeProcess(ProcessHandle(pid, self._wall, launch=self.launch), spec)
        self.procs[pid] = proc
        self.spawned.append(proc)
        return proc.handle

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        proc = self.procs.get(handle.pid)
        if proc is None or proc.handle.start_time != handle.start_time:
            return ExitStatus()
        return proc.exit

    def signal(self, handle: ProcessHandle, sig: int) -> None:
        proc = self.procs.get(handle.pid)
        if proc is None or proc.exit is not None:
            return
        proc.signals.append(sig)
        if sig == signal.SIGKILL or handle.pid not in self.ignore_signals:
            proc.exit = ExitStatus(signal=sig)

    def adopt(self, pid: int, start_time: float) -> ProcessHandle | None:
        proc = self.procs.get(pid)
        if proc is None or proc.exit is not None or proc.handle.start_time != start_time:
            return None
        return ProcessHandle(pid, start_time, adopted=True)

    def close(self) -> None:
        """Nothing to release."""

    # test controls -------------------------------------------------------------------------------------
    def exit(self, pid: int, code: int | None = None, sig: int | None = None) -> None:
        """Make process ``pid`` end with ``code`` (or ``sig``)."""
        self.procs[pid].exit = ExitStatus(code=code, signal=sig)

    def alive(self) -> list[int]:
        """Pids of the pretend processes still running."""
        return [pid for pid, p in self.procs.items() if p.exit is None]

    def last(self, argv0: str | None = None) -> FakeProcess:
        """The most recently spawned process (of ``argv0`` when given)."""
        for proc in reversed(self.spawned):
            if argv0 is None or proc.spec.argv[0] == argv0 or argv0 in proc.spec.argv:
                return proc
        raise KeyError(argv0)

    def running(self, name_arg: str) -> FakeProcess:
        """The live process whose argv contains ``name_arg``."""
        for proc in reversed(self.spawned):
            if proc.exit is None and name_arg in proc.spec.argv:
                return proc
        raise KeyError(name_arg)
