"""CUDA MPS: one control daemon per GPU under colo's state dir, its defaults, health, queries and stop.

Layout (``MpsRoot``)::

    <state_dir>/mps/<GPU UUID>/pipe   CUDA_MPS_PIPE_DIRECTORY of that GPU's daemon (and of its clients)
    <state_dir>/mps/<GPU UUID>/log    CUDA_MPS_LOG_DIRECTORY: control.log, server.log

Each daemon is started with ``CUDA_VISIBLE_DEVICES=<uuid>``, so it (and every client) sees its GPU as
device 0. Defaults (``set_default_*``) only reach the NEXT server and are lost on ``quit``: colo applies
them right after starting (before any client can connect) and again whenever it adopts a daemon.
All talk goes through :class:`colo.gpu.mps.control.MpsControl` (the real one runs
``nvidia-cuda-mps-control``). Time is injected (``clock``, ``sleep``) so tests never wait.

Raises: MpsError (exit 2) with a hint for every failure a person can act on.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colo import units
from colo.errors import MpsError
from colo.gpu.mps.control import SIGKILL, SIGTERM, MpsControl, MpsProcess, SubprocessMpsControl
from colo.gpu.mps.replies import (
    DaemonStatus,
    MpsClientRow,
    ServerInfo,
    ServerStatus,
    StopResult,
    parse_pids,
    parse_ps,
    parse_server_status,
)
from colo.plan.types import AgentPlan

__all__ = [
    "MAX_PIPE_DIR_CHARS",
    "DaemonStatus",
    "MpsClientRow",
    "MpsDaemon",
    "MpsDefaults",
    "MpsFleet",
    "MpsPaths",
    "MpsRoot",
    "ServerInfo",
    "ServerStatus",
    "StopResult",
    "client_env",
    "defaults_for_agents",
    "parse_pids",
    "parse_ps",
    "parse_server_status",
]

# A Unix socket path has at most 107 bytes and MPS creates its sockets inside the pipe dir: leave room.
MAX_PIPE_DIR_CHARS = 88
# Client-side variables that must not leak into a daemon's environment (its servers inherit it).
_CLIENT_VARS = (
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_CLIENT_PRIORITY",
)


@dataclass(frozen=True)
class MpsPaths:
    """The pipe dir and log dir of one GPU's daemon."""

    pipe_dir: Path
    log_dir: Path


class MpsRoot:
    """colo's MPS directory: one ``<uuid>/pipe`` and ``<uuid>/log`` per GPU."""

    def __init__(self, base_dir: str | Path) -> None:
        self.base_dir = Path(base_dir)

    @classmethod
    def under_state_dir(cls, state_dir: str | Path) -> MpsRoot:
        """The root colo uses by default: ``<state_dir>/mps``."""
        return cls(Path(state_dir) / "mps")

    def for_gpu(self, uuid: str) -> MpsPaths:
        """Paths for the GPU with this UUID (not created)."""
        if not uuid or "/" in uuid or uuid in {".", ".."}:
            raise MpsError(f"{uuid!r} is not a GPU UUID", hint="use the UUID `colo gpu info` prints")
        d = self.base_dir / uuid
        return MpsPaths(pipe_dir=d / "pipe", log_dir=d / "log")

    def gpu_uuids(self) -> list[str]:
        """UUIDs that have a directory here (daemons colo started at some time)."""
        if not self.base_dir.is_dir():
            return []
        return sorted(p.name for p in self.base_dir.iterdir() if (p / "pipe").is_dir())


@dataclass(frozen=True)
class MpsDefaults:
    """What a daemon applies to its next server. ``None`` leaves MPS's own default."""

    pinned_mem_limit_bytes: int | None = None
    active_thread_pct: int | None = None
    client_priority: int | None = None

    def commands(self, device_ordinal: int = 0) -> list[str]:
        """The ``set_default_*`` command lines that apply these defaults."""
        out: list[str] = []
        if self.pinned_mem_limit_bytes is not None:
            limit = units.mps_limit(self.pinned_mem_limit_bytes)
            out.append(f"set_default_device_pinned_mem_limit {device_ordinal} {limit}")
        if self.active_thread_pct is not None:
            out.append(f"set_default_active_thread_percentage {self.active_thread_pct}")
        if self.client_priority is not None:
            out.append(f"set_default_client_priority {self.client_priority}")
        return out


def defaults_for_agents(agents: Iterable[AgentPlan]) -> MpsDefaults:
    """Server defaults for the agents placed on one GPU.

    A client's ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` / ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` can only lower the
    server's values, so the server default is the largest of them: a cap for a client that forgot its env,
    never below any agent's own limit.
    """
    agents = list(agents)
    if not agents:
        return MpsDefaults()
    return MpsDefaults(
        pinned_mem_limit_bytes=max(a.limit_bytes for a in agents),
        active_thread_pct=max(a.active_thread_pct for a in agents),
        client_priority=None,
    )


@dataclass
class _Clock:
    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_secs: float = 0.1


class MpsDaemon:
    """The control daemon of one GPU (by UUID), in its own pipe dir.

    ``control`` defaults to the real :class:`SubprocessMpsControl`. ``clock``/``sleep`` are injected for
    tests. ``command_timeout_secs`` bounds every command; ``start_timeout_secs`` the wait for a new daemon
    to answer.
    """

    def __init__(
        self,
        paths: MpsPaths,
        gpu_uuid: str,
        control: MpsControl | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        command_timeout_secs: float = 10.0,
        start_timeout_secs: float = 20.0,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.paths = paths
        self.gpu_uuid = gpu_uuid
        self.control: MpsControl = control if control is not None else SubprocessMpsControl()
        self._time = _Clock(clock, sleep)
        self.command_timeout_secs = command_timeout_secs
        self.start_timeout_secs = start_timeout_secs
        self._base_env = dict(base_env) if base_env is not None else None
        self.started_by_colo = False
        self.last_defaults: MpsDefaults | None = None

    # --- environment and directories ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for the daemon and for commands: pipe/log dirs, pinned to this GPU."""
        base = dict(os.environ if self._base_env is None else self._base_env)
        for k in _CLIENT_VARS:
            base.pop(k, None)
        base["CUDA_MPS_PIPE_DIRECTORY"] = str(self.paths.pipe_dir)
        base["CUDA_MPS_LOG_DIRECTORY"] = str(self.paths.log_dir)
        base["CUDA_VISIBLE_DEVICES"] = self.gpu_uuid
        return base

    def prepare_dirs(self) -> None:
        """Create the pipe and log dirs (0700/0755) and check they are usable. Raises MpsError."""
        pipe = self.paths.pipe_dir
        if len(str(pipe)) > MAX_PIPE_DIR_CHARS:
            raise MpsError(
                f"pipe dir {pipe} is {len(str(pipe))} characters long; MPS sockets there would exceed the "
                "Unix socket path limit",
                hint="set a shorter state_dir in colo.yaml (or COLO_STATE_DIR)",
            )
        for d, mode in ((pipe, 0o755), (self.paths.log_dir, 0o755)):
            try:
                d.mkdir(parents=True, exist_ok=True, mode=mode)
            except OSError as exc:
                raise MpsError(
                    f"cannot create MPS directory {d}: {exc.strerror or exc}",
                    hint="choose a writable state_dir in colo.yaml (or COLO_STATE_DIR)",
                ) from exc
            if not os.access(d, os.W_OK | os.X_OK):
                raise MpsError(
                    f"MPS directory {d} is not writable by this user",
                    hint="fix its owner/permissions or choose another state_dir",
                )

    # --- finding the daemon --------------------------------------------------------------------------

    def processes(self) -> list[MpsProcess]:
        """Control daemon and server processes of this pipe dir."""
        return self.control.find_processes(self.paths.pipe_dir)

    def control_pid(self) -> int | None:
        """PID of this pipe dir's control daemon, or None."""
        for p in self.processes():
            if p.kind == "control":
                return p.pid
        return None

    def is_running(self) -> bool:
        """A control daemon process exists for this pipe dir (it may still not answer: see healthy)."""
        return self.control_pid() is not None

    def send(self, command: str, *, timeout_secs: float | None = None) -> str:
        """One command to this daemon; its reply. Raises MpsError."""
        return self.control.send(
            command,
            env=self.env(),
            timeout_secs=timeout_secs if timeout_secs is not None else self.command_timeout_secs,
        )

    def default_active_thread_pct(self) -> float | None:
        """``get_default_active_thread_percentage`` as a number; None when there is no numeric answer."""
        try:
            reply = self.send("get_default_active_thread_percentage")
        except MpsError:
            return None
        m = re.search(r"\d+(?:\.\d+)?", reply)
        return float(m.group(0)) if m else None

    def healthy(self) -> bool:
        """The health probe NVIDIA's device plugin uses: ``get_default_active_thread_percentage`` answers."""
        return self.default_active_thread_pct() is not None

    # --- start / adopt -------------------------------------------------------------------------------

    def start(self, defaults: MpsDefaults | None = None) -> bool:
        """Start this GPU's daemon, or adopt the one already in the pipe dir; apply ``defaults``.

        Returns True if it started a daemon, False if it adopted a running one. Raises MpsError: binary
        missing, pipe dir unusable, a daemon in the pipe dir pinned to another GPU or not answering, or a new
        daemon that does not answer within ``start_timeout_secs``.
        """
        defaults = defaults or MpsDefaults()
        self.prepare_dirs()
        existing = [p for p in self.processes() if p.kind == "control"]
        if existing:
            self._adopt(existing[0], defaults)
            return False
        self.control.start_daemon(env=self.env(), timeout_secs=max(self.command_timeout_secs, self.start_timeout_secs))
        deadline = self._time.now() + self.start_timeout_secs
        while not self.healthy():
            if self._time.now() >= deadline:
                raise MpsError(
                    f"the MPS control daemon for GPU {self.gpu_uuid} did not answer within "
                    f"{self.start_timeout_secs:g} s of starting",
                    hint=f"see {self.paths.log_dir / 'control.log'}",
                )
            self._time.sleep(self._time.poll_secs)
        self.started_by_colo = True
        self.apply_defaults(defaults)
        return True

    def _adopt(self, proc: MpsProcess, defaults: MpsDefaults) -> None:
        pinned = proc.visible_devices
        if pinned is not None and pinned != self.gpu_uuid:
            raise MpsError(
                f"an MPS control daemon (pid {proc.pid}) already runs in {self.paths.pipe_dir} but is "
                f"pinned to CUDA_VISIBLE_DEVICES={pinned!r}, not GPU {self.gpu_uuid}",
                hint=f"stop it (`colo mps stop --gpu {pinned}` or kill {proc.pid}) and start again",
            )
        if not self.healthy():
            raise MpsError(
                f"an MPS control daemon (pid {proc.pid}) holds {self.paths.pipe_dir} but does not answer",
                hint=f"`colo mps stop --gpu {self.gpu_uuid}` kills it after a failed quit; then start again",
            )
        self.apply_defaults(defaults)

    def apply_defaults(self, defaults: MpsDefaults) -> None:
        """Send the ``set_default_*`` commands (device ordinal 0: the daemon sees only its GPU).

        Checks the active thread percentage reads back. Raises MpsError.
        """
        for cmd in defaults.commands(device_ordinal=0):
            reply = self.send(cmd)
            if re.search(r"\b(error|invalid|unrecognized|unknown|failed)\b", reply, re.IGNORECASE):
                raise MpsError(
                    f"the MPS control daemon for GPU {self.gpu_uuid} refused {cmd!r}: {reply.strip()}",
                    hint="check the driver supports this setting (see docs/mps.md)",
                )
        if defaults.active_thread_pct is not None:
            got = self.default_active_thread_pct()
            if got is not None and round(got) != defaults.active_thread_pct:
                raise MpsError(
                    f"set_default_active_thread_percentage {defaults.active_thread_pct} did not stick on GPU "
                    f"{self.gpu_uuid} (daemon says {got:g})",
                    hint="see control.log",
                )
        self.last_defaults = defaults

    # --- queries -----------------------------------------------------------------------------------

    def server_pids(self) -> list[int]:
        """``get_server_list``. Raises MpsError."""
        return parse_pids(self.send("get_server_list"))

    def server_status(self, pid: int) -> ServerStatus:
        """``get_server_status <pid>``. Raises MpsError."""
        return parse_server_status(self.send(f"get_server_status {pid}"))

    def client_pids(self, server_pid: int) -> list[int]:
        """``get_client_list <server pid>``. Raises MpsError."""
        return parse_pids(self.send(f"get_client_list {server_pid}"))

    def ps(self) -> list[MpsClientRow]:
        """``ps``: client processes with their server and device. Raises MpsError."""
        return parse_ps(self.send("ps"))

    def terminate_client(self, server_pid: int, client_pid: int) -> None:
        """Send ``terminate_client <server pid> <client pid>`` (how a client is ended). Raises MpsError."""
        reply = self.send(f"terminate_client {server_pid} {client_pid}")
        if re.search(r"\b(error|invalid|not found|failed)\b", reply, re.IGNORECASE):
            raise MpsError(
                f"terminate_client {server_pid} {client_pid} failed on GPU {self.gpu_uuid}: {reply.strip()}",
                hint="is the client still attached? `colo mps status` lists clients",
            )

    def status(self) -> DaemonStatus:
        """A snapshot: running, healthy, servers with status and clients. Never raises."""

        def snap(**kw: Any) -> DaemonStatus:
            return DaemonStatus(
                gpu_uuid=self.gpu_uuid,
                pipe_dir=str(self.paths.pipe_dir),
                log_dir=str(self.paths.log_dir),
                **kw,
            )

        try:
            pid = self.control_pid()
        except MpsError as exc:
            return snap(control_pid=None, running=False, healthy=False, error=str(exc))
        if pid is None:
            return snap(control_pid=None, running=False, healthy=False)
        pct = self.default_active_thread_pct()
        if pct is None:
            return snap(control_pid=pid, running=True, healthy=False, error="the control daemon does not answer")
        servers: list[ServerInfo] = []
        error: str | None = None
        try:
            for spid in self.server_pids():
                servers.append(ServerInfo(spid, self.server_status(spid), tuple(self.client_pids(spid))))
        except MpsError as exc:
            error = str(exc)
        return snap(
            control_pid=pid,
            running=True,
            healthy=True,
            default_active_thread_pct=pct,
            servers=tuple(servers),
            error=error,
        )

    # --- stop ----------------------------------------------------------------------------------------

    def _wait_gone(self, pids: Sequence[int], secs: float) -> list[int]:
        deadline = self._time.now() + secs
        while True:
            left = [p for p in pids if self.control.alive(p)]
            if not left or self._time.now() >= deadline:
                return left
            self._time.sleep(self._time.poll_secs)

    def stop(self, timeout_secs: float = 10.0) -> StopResult:
        """``quit -t <timeout>``; wait for the daemon and its servers to exit; else SIGTERM, then SIGKILL.

        Only processes of this pipe dir are signalled. Raises MpsError if one survives SIGKILL (or cannot be
        signalled).
        """
        procs = self.processes()
        pids = [p.pid for p in procs]
        if not any(p.kind == "control" for p in procs):
            if not pids:
                return StopResult(was_running=False, message="no MPS daemon was running")
        else:
            with contextlib.suppress(MpsError):
                pids.extend(p for p in self.server_pids() if p not in pids)
        answered = False
        if any(p.kind == "control" for p in procs):
            try:
                self.send(f"quit -t {max(1, round(timeout_secs))}", timeout_secs=self.command_timeout_secs)
                answered = True
            except MpsError:
                answered = False
        left = self._wait_gone(pids, timeout_secs + 2.0 if answered else 0.0)
        if answered and any(p.kind == "control" and p.pid in left for p in procs):
            # A control program that does not take `-t` may have ignored it: ask once more without it.
            with contextlib.suppress(MpsError):
                self.send("quit")
            left = self._wait_gone(left, 3.0)
        killed: list[int] = []
        for sig, wait in ((SIGTERM, 3.0), (SIGKILL, 3.0)):
            if not left:
                break
            for pid in left:
                self.control.signal(pid, sig)
            killed = sorted(set(killed) | set(left))
            left = self._wait_gone(left, wait)
        # Anything else that appeared in this pipe dir meanwhile (a server spawned during quit).
        stragglers = [p.pid for p in self.processes() if p.pid not in pids]
        for pid in stragglers:
            self.control.signal(pid, SIGKILL)
            killed.append(pid)
        left += self._wait_gone(stragglers, 3.0)
        if left:
            raise MpsError(
                f"MPS processes {left} of GPU {self.gpu_uuid} survived SIGKILL",
                hint="check `ps -o pid,stat,cmd -p " + ",".join(map(str, left)) + "` (a process in D state?)",
            )
        self.started_by_colo = False
        if answered and not killed:
            msg = "the daemon quit"
        elif answered:
            msg = f"the daemon answered quit but pids {killed} had to be killed"
        else:
            msg = f"the daemon did not answer quit; killed pids {killed}"
        return StopResult(was_running=True, quit_answered=answered, killed_pids=tuple(killed), message=msg)


@dataclass
class MpsFleet:
    """One daemon per GPU under one root."""

    root: MpsRoot
    gpu_uuids: Sequence[str]
    control: MpsControl | None = None
    daemon_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.control is None:
            self.control = SubprocessMpsControl()
        self._daemons = {
            u: MpsDaemon(self.root.for_gpu(u), u, self.control, **self.daemon_options) for u in self.gpu_uuids
        }

    def daemon(self, uuid: str) -> MpsDaemon:
        """The daemon of this GPU. Raises KeyError for a GPU not in the fleet."""
        return self._daemons[uuid]

    def daemons(self) -> list[MpsDaemon]:
        return list(self._daemons.values())

    def start_all(self, defaults_by_uuid: Mapping[str, MpsDefaults] | None = None) -> dict[str, bool]:
        """Start (or adopt) every GPU's daemon; True where one was started. Raises MpsError (the first)."""
        defaults_by_uuid = defaults_by_uuid or {}
        return {u: d.start(defaults_by_uuid.get(u)) for u, d in self._daemons.items()}

    def stop_all(self, timeout_secs: float = 10.0) -> dict[str, StopResult]:
        """Stop every GPU's daemon. Raises MpsError after trying all of them, naming those that failed."""
        results: dict[str, StopResult] = {}
        errors: list[str] = []
        for u, d in self._daemons.items():
            try:
                results[u] = d.stop(timeout_secs)
            except MpsError as exc:
                errors.append(str(exc))
        if errors:
            raise MpsError("; ".join(errors))
        return results

    def statuses(self) -> list[DaemonStatus]:
        return [d.status() for d in self._daemons.values()]

    def foreign_daemons(self) -> list[MpsProcess]:
        """MPS control daemons here that are not in this fleet's pipe dirs (e.g. /tmp/nvidia-mps)."""
        assert self.control is not None
        ours = {os.path.realpath(str(d.paths.pipe_dir)) for d in self._daemons.values()}
        return [
            p
            for p in self.control.find_processes(None)
            if p.kind == "control" and os.path.realpath(p.pipe_dir) not in ours
        ]


def client_env(
    agent: AgentPlan,
    pipe_dir: str | Path | MpsPaths,
    *,
    device_ordinal: int = 0,
    gpu_uuid: str | None = None,
    log_dir: str | Path | None = None,
) -> dict[str, str]:
    """The environment an agent's process needs to run as an MPS client under its plan entry.

    ``CUDA_MPS_PIPE_DIRECTORY`` (its GPU's daemon), ``CUDA_MPS_LOG_DIRECTORY`` (when known: from MpsPaths or
    ``log_dir``), ``CUDA_VISIBLE_DEVICES=<uuid>`` when ``gpu_uuid`` is given (the client then sees it as
    device 0), ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="<ordinal>=<N>M"`` (whole MiB, rounded up),
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and ``CUDA_MPS_CLIENT_PRIORITY``.
    """
    if isinstance(pipe_dir, MpsPaths):
        log_dir = log_dir if log_dir is not None else pipe_dir.log_dir
        pipe_dir = pipe_dir.pipe_dir
    if agent.limit_bytes <= 0:
        raise MpsError(f"agent {agent.name!r} has no memory limit in the plan", hint="run `colo plan` to see why")
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe_dir)}
    if log_dir is not None:
        env["CUDA_MPS_LOG_DIRECTORY"] = str(log_dir)
    if gpu_uuid:
        env["CUDA_VISIBLE_DEVICES"] = gpu_uuid
    env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"{device_ordinal}={units.mps_limit(agent.limit_bytes)}"
    env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(agent.active_thread_pct))
    env["CUDA_MPS_CLIENT_PRIORITY"] = str(int(agent.client_priority))
    return env
