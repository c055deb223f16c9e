"""One GPU's CUDA MPS control daemon: start or adopt it, its server defaults, health, queries and stop.

Each daemon is started with ``CUDA_VISIBLE_DEVICES=<uuid>`` (its environment: :func:`colo.gpu.mps.env.daemon_env`),
so it (and every client) sees its GPU as device 0. Defaults (``set_default_*``) only reach the NEXT server and
are lost on ``quit``: colo applies them right after starting (before any client can connect) and again
whenever it adopts a daemon. All talk goes through :class:`colo.gpu.mps.control.MpsControl` (the real one runs
``nvidia-cuda-mps-control``). Time is injected (a :class:`colo.clock.Clock`) so tests never wait.

Where the daemons live: :mod:`colo.gpu.mps.root`; one per GPU: :mod:`colo.gpu.mps.fleet`; what the control
program answers: :mod:`colo.gpu.mps.replies`.

Raises: MpsError (exit 2) with a hint for every failure a person can act on.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from colo import units
from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import MpsError
from colo.gpu.mps.control import SIGKILL, SIGTERM, MpsControl, MpsProcess, SubprocessMpsControl
from colo.gpu.mps.env import daemon_env
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
from colo.gpu.mps.root import MAX_PIPE_DIR_CHARS, MpsPaths

POLL_SECS = 0.1  # how often a wait (for a new daemon to answer, for processes to exit) looks again


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


class MpsDaemon:
    """The control daemon of one GPU (by UUID), in its own pipe dir.

    ``control`` defaults to the real :class:`SubprocessMpsControl`; ``clock`` to the system's (tests pass a
    :class:`colo.clock.FakeClock`, whose ``sleep`` advances it). ``command_timeout_secs`` bounds every command; ``start_timeout_secs`` the wait for a new daemon
    to answer.
    """

    def __init__(
        self,
        paths: MpsPaths,
        gpu_uuid: str,
        control: MpsControl | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        command_timeout_secs: float = 10.0,
        start_timeout_secs: float = 20.0,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.paths = paths
        self.gpu_uuid = gpu_uuid
        self.control: MpsControl = control if control is not None else SubprocessMpsControl()
        self.clock: Clock = clock
        self.command_timeout_secs = command_timeout_secs
        self.start_timeout_secs = start_timeout_secs
        self._base_env = dict(base_env) if base_env is not None else None
        self.started_by_colo = False
        self.last_defaults: MpsDefaults | None = None

    # --- environment and directories ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for the daemon and for commands: pipe/log dirs, pinned to this GPU."""
        return daemon_env(self.paths, self.gpu_uuid, self._base_env)

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
        deadline = self.clock.monotonic() + self.start_timeout_secs
        while not self.healthy():
            if self.clock.monotonic() >= deadline:
                raise MpsError(
                    f"the MPS control daemon for GPU {self.gpu_uuid} did not answer within "
                    f"{self.start_timeout_secs:g} s of starting",
                    hint=f"see {self.paths.log_dir / 'control.log'}",
                )
            self.clock.sleep(POLL_SECS)
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
        deadline = self.clock.monotonic() + secs
        while True:
            left = [p for p in pids if self.control.alive(p)]
            if not left or self.clock.monotonic() >= deadline:
                return left
            self.clock.sleep(POLL_SECS)

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
