"""The supervisor's view of the per-GPU MPS daemons (:class:`~colo.supervise.recovery.mps_recovery.MpsHooks`), over
``colo.gpu.mps.daemon.MpsFleet``: FAULT detection (the server statuses of the node's one GPU reading, else
``get_server_status``; fault lines new in each daemon's ``control.log``/``server.log`` name the client when
they can), deaths (every control daemon and server process colo started, adopted or saw on its GPUs is watched
by pid and start time — no MPS command, so every tick), a hung daemon or server (the probe of
:mod:`colo.supervise.recovery.mps_probe`: a stopped process, or a control query unanswered for 1 s), each
compute process's MPS membership from the GPU reading, a fresh health look for one GPU, ``terminate_client``,
ending a hung daemon and its servers (SIGKILL), restarting one daemon.

A fault line alone does not start a recovery (a stray "fatal" in a log must not restart a GPU's agents):
the server's own FAULT status does, and agents dying with MPS errors do (see the supervisor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import MpsError
from colo.gpu.mps.control import SIGKILL, MpsControl, SubprocessMpsControl
from colo.gpu.mps.daemon import MpsDefaults
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.log import MpsLogKind, MpsLogReader
from colo.gpu.mps.replies import ServerStatus
from colo.gpu.poller import GpuState
from colo.supervise.recovery.mps_probe import MpsProbe, run_now
from colo.supervise.recovery.mps_recovery import MpsFault, RecoveryTrigger

#: A fault line in an MPS log names the culprit of a FAULT seen within this many seconds.
HINT_SECS = 60.0
#: Two start times closer than this (seconds) are the same process.
_SAME_START_SECS = 1.0


@dataclass
class _Watched:
    """What colo knows of one GPU's MPS processes: the daemon (pid, start time) and servers (pid -> start
    time), and when they were last seen alive (monotonic seconds)."""

    daemon_pid: int | None = None
    daemon_start: float | None = None
    servers: dict[int, float | None] = field(default_factory=dict)
    ok_at: float = 0.0
    active_at: float | None = None  # when a look last found no server in FAULT
    lost: bool = False  # the daemon died or was ended as hung: nothing answers until it is restarted
    hung_told: bool = False  # a hang was reported (once, until the daemon is restarted)


class FleetHooks:
    """:class:`MpsHooks` for an :class:`MpsFleet`; each MPS command is bounded by the daemon's timeout.

    ``reading`` (the orchestrator's last :class:`~colo.gpu.poller.GpuState`): when given, FAULT is read from
    it instead of asking the daemons again, so one poller reads each GPU's MPS, and each agent's MPS
    membership is judged from its processes (:meth:`gpu_processes`). ``probe`` tells a hung daemon or server
    (default: an :class:`MpsProbe` whose queries run in worker threads when the control program is the real
    one — a subprocess per query — and at once otherwise: an in-memory control answers at once).
    """

    def __init__(
        self,
        fleet: MpsFleet,
        reading: Callable[[], GpuState] | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        probe: MpsProbe | None = None,
    ) -> None:
        self.fleet = fleet
        self._reading = reading
        self._clock = clock
        if probe is None:
            threaded = isinstance(fleet.control, SubprocessMpsControl)
            probe = MpsProbe(clock, None if threaded else run_now)
        self.probe = probe
        self._processes_seen: GpuState | None = None
        self._logs = {d.gpu_uuid: self._reader(d.paths.log_dir) for d in fleet.daemons()}
        self._hints: dict[str, tuple[float, int | None, str]] = {}  # uuid -> (when, client pid, log line)
        self._watch = {d.gpu_uuid: self._learn(d.gpu_uuid) for d in fleet.daemons()}
        self._last_reading: GpuState | None = None

    def watch(self, gpu_uuid: str) -> None:
        """Watch the daemon of a GPU just taken into the fleet (started by a switch to MPS)."""
        self._logs[gpu_uuid] = self._reader(self.fleet.daemon(gpu_uuid).paths.log_dir)
        self._watch[gpu_uuid] = self._learn(gpu_uuid)
        self.probe.reset(gpu_uuid)

    def unwatch(self, gpu_uuid: str) -> None:
        """Stop watching a GPU about to leave the fleet (a switch to time-slicing): its daemon's exit is no
        fault."""
        self._logs.pop(gpu_uuid, None)
        self._watch.pop(gpu_uuid, None)
        self._hints.pop(gpu_uuid, None)
        self.probe.forget(gpu_uuid)

    # --- deaths (every tick) -------------------------------------------------------------------------------

    def _control(self) -> MpsControl:
        assert self.fleet.control is not None
        return self.fleet.control

    def _alive(self, pid: int, start: float | None) -> bool:
        control = self._control()
        if not control.alive(pid):
            return False
        now_start = control.start_time(pid)
        return start is None or now_start is None or abs(now_start - start) <= _SAME_START_SECS

    def _learn(self, uuid: str) -> _Watched:
        """The GPU's daemon and servers as the process table shows them now (a scan: at start, after a
        restart)."""
        w = _Watched(ok_at=self._clock.monotonic())
        try:
            found = self.fleet.daemon(uuid).processes()
        except MpsError:
            return w
        for p in found:
            if p.kind == "control" and w.daemon_pid is None:
                w.daemon_pid, w.daemon_start = p.pid, self._control().start_time(p.pid)
            elif p.kind == "server":
                w.servers[p.pid] = self._control().start_time(p.pid)
        return w

    def _see_servers(self, uuid: str, pids: list[int]) -> None:
        """Servers listed by the daemon (a reading, ``get_server_list``): watched from now on."""
        w = self._watch.get(uuid)
        if w is None:
            return
        for pid in pids:
            if pid not in w.servers:
                w.servers[pid] = self._control().start_time(pid)

    def watched_pids(self) -> list[int]:
        """Every MPS process being watched now (daemons and servers): the run loop wakes when one exits."""
        out: list[int] = []
        for w in self._watch.values():
            if w.daemon_pid is not None:
                out.append(w.daemon_pid)
            out.extend(w.servers)
        return out

    def deaths(self) -> list[MpsFault]:
        """The GPUs whose daemon (``DAEMON_DIED``) or a watched server (``SERVER_DIED``) died since the last
        call; each death once. Process liveness only: cheap enough for every tick."""
        now = self._clock.monotonic()
        out: list[MpsFault] = []
        for uuid, w in self._watch.items():
            dead_servers = [pid for pid, start in w.servers.items() if not self._alive(pid, start)]
            for pid in dead_servers:
                del w.servers[pid]
            daemon_dead = w.daemon_pid is not None and not self._alive(w.daemon_pid, w.daemon_start)
            if daemon_dead:
                gone = f" (and server {', '.join(map(str, dead_servers))})" if dead_servers else ""
                out.append(
                    MpsFault(
                        uuid,
                        f"MPS control daemon {w.daemon_pid} is gone{gone}",
                        trigger=RecoveryTrigger.DAEMON_DIED,
                        seen_ok_at=w.ok_at,
                    )
                )
                w.daemon_pid = w.daemon_start = None
                w.lost = True
            elif dead_servers:
                out.append(
                    MpsFault(
                        uuid,
                        f"MPS server {', '.join(map(str, dead_servers))} is gone",
                        trigger=RecoveryTrigger.SERVER_DIED,
                        seen_ok_at=w.ok_at,
                    )
                )
            w.ok_at = now
        return out + self._hung()

    def _hung(self) -> list[MpsFault]:
        """The probe's look at every watched GPU whose daemon is not known dead: a stopped server
        (``SERVER_HUNG``), a stopped or unanswering daemon (``DAEMON_HUNG``); each hang once."""
        out: list[MpsFault] = []
        for uuid, w in self._watch.items():
            if w.lost or w.hung_told:
                continue
            try:
                daemon = self.fleet.daemon(uuid)
            except KeyError:
                continue
            verdict = self.probe.look(uuid, daemon, w.daemon_pid, list(w.servers), self._control().stopped)
            if verdict is None:
                continue
            w.hung_told = True
            trigger = RecoveryTrigger.SERVER_HUNG if verdict.part == "server" else RecoveryTrigger.DAEMON_HUNG
            out.append(MpsFault(uuid, verdict.detail, trigger=trigger, seen_ok_at=verdict.answered_at))
        return out

    def answering(self, gpu_uuid: str) -> bool:
        """The probe's verdict on this GPU's daemon (no command sent): False while it is dead, hung, or did
        not answer its last probes. True for a GPU not watched."""
        w = self._watch.get(gpu_uuid)
        if w is None:
            return True
        return not (w.lost or w.hung_told) and self.probe.answering(gpu_uuid)

    def end_hung(self, gpu_uuid: str) -> None:
        """SIGKILL this GPU's daemon and servers — the watched ones and any the process table ties to its pipe
        dir (SIGKILL reaches a stopped process) — wait for them (at most 1 s), reap, and forget them: their
        deaths are colo's doing, not new failures. Never raises."""
        w = self._watch.get(gpu_uuid)
        pids: set[int] = set()
        if w is not None:
            pids |= set(w.servers)
            if w.daemon_pid is not None:
                pids.add(w.daemon_pid)
        with contextlib.suppress(MpsError, KeyError):
            pids |= {p.pid for p in self.fleet.daemon(gpu_uuid).processes()}
        control = self._control()
        for pid in sorted(pids):
            with contextlib.suppress(MpsError):
                control.signal(pid, SIGKILL)
        deadline = self._clock.monotonic() + 1.0
        while any(control.alive(p) for p in pids) and self._clock.monotonic() < deadline:
            self._clock.sleep(0.05)
        control.reap()
        if w is not None:
            w.daemon_pid = w.daemon_start = None
            w.servers.clear()
            w.lost = True

    def gpu_processes(self) -> dict[int, tuple[str, bool]] | None:
        """Every compute process of a GPU reading newer than the last call: pid -> (GPU UUID, listed by NVML
        as an MPS client, nvidia-smi type ``M+C``). None when there is no new reading, or it failed."""
        if self._reading is None:
            return None
        state = self._reading()
        if state is self._processes_seen or state.error:
            return None
        self._processes_seen = state
        out: dict[int, tuple[str, bool]] = {}
        for row in state.info.get("processes", []):
            if row.get("mps_known") is False:
                continue  # NVML's MPS list failed on that GPU: its rows say nothing about membership
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[int(row["pid"])] = (str(row["gpu_uuid"]), bool(row["is_mps_client"]))
        return out

    def clients(self) -> dict[str, set[int]]:
        """Per GPU of the fleet seen whole in the last reading: the client pids of its servers."""
        if self._reading is None:
            return {}
        mine = {d.gpu_uuid for d in self.fleet.daemons()}
        out: dict[str, set[int]] = {}
        for gpu in self._reading().info.get("gpus", []):
            daemon = gpu.get("mps") or {}
            uuid = str(gpu.get("uuid"))
            if uuid in mine and daemon.get("healthy") and not daemon.get("error"):
                out[uuid] = {int(c) for srv in daemon.get("servers") or [] for c in srv.get("client_pids") or []}
        return out

    def healthy(self, gpu_uuid: str) -> bool:
        """Daemon and servers alive, the daemon answers ``get_server_list`` (bounded by its command timeout),
        no server in FAULT. Never raises."""
        w = self._watch.get(gpu_uuid)
        if w is None or w.daemon_pid is None or not self._alive(w.daemon_pid, w.daemon_start):
            return False
        if any(not self._alive(pid, start) for pid, start in w.servers.items()):
            return False
        try:
            daemon = self.fleet.daemon(gpu_uuid)
            pids = daemon.server_pids()
            self._see_servers(gpu_uuid, pids)
            return all(daemon.server_status(pid) != ServerStatus.FAULT for pid in pids)
        except (MpsError, KeyError):
            return False

    @staticmethod
    def _reader(log_dir: object) -> MpsLogReader:
        reader = MpsLogReader(str(log_dir))
        reader.read_new()  # what is already there happened before us (an orchestrator restart): skip it
        return reader

    def _uuids(self) -> list[str]:
        return [d.gpu_uuid for d in self.fleet.daemons()]

    # --- FAULT and answering (once a second) ------------------------------------------------------------

    def faults(self) -> list[MpsFault]:
        """GPUs whose MPS server says FAULT (in the last GPU reading, else ``get_server_status``), with the
        client a recent fault line in that daemon's logs names. Never raises for a daemon that does not answer
        (skipped: the probe, :mod:`colo.supervise.recovery.mps_probe`, tells a hung one)."""
        now = self._clock.monotonic()
        if self._reading is not None:
            state = self._reading()
            if state is self._last_reading:
                return []  # nothing new since the last call: the next reading comes within GPU_POLL_SECS
            self._last_reading = state
        for uuid, reader in self._logs.items():
            for event in reader.read_new():
                if event.kind == MpsLogKind.FAULT:
                    old = self._hints.get(uuid)
                    pid = event.client_pid or (old[1] if old and now - old[0] < HINT_SECS else None)
                    self._hints[uuid] = (now, pid, event.message)
        out: list[MpsFault] = []
        faulted = self._faulted_servers()
        for uuid, watched in self._watch.items():
            if uuid not in {u for u, _ in faulted}:
                watched.active_at = now  # no FAULT in this look: a later detection's upper bound starts here
        for uuid, pid in faulted:
            hint = self._hints.pop(uuid, None)
            found = self._watch.get(uuid)
            ok_at = found.active_at if found is not None else None
            if hint is not None and now - hint[0] < HINT_SECS:
                out.append(MpsFault(uuid, f"MPS server {pid} reports FAULT; log: {hint[2]}", hint[1], seen_ok_at=ok_at))
            else:
                out.append(MpsFault(uuid, f"MPS server {pid} reports FAULT", seen_ok_at=ok_at))
        return out

    def _faulted_servers(self) -> list[tuple[str, int]]:
        """(GPU UUID, server pid) of the first server in FAULT on each GPU of the fleet: from the last GPU
        reading, and asked of the daemon itself for a GPU the reading did not fully see."""
        uuids = self._uuids()
        out: list[tuple[str, int]] = []
        if self._reading is not None:
            seen, out = self._faulted_in(self._reading())
            uuids = [u for u in uuids if u not in seen]
        return out + self._asked(uuids)

    def _asked(self, uuids: list[str]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for uuid in uuids:
            daemon = self.fleet.daemon(uuid)
            try:
                pids = daemon.server_pids()
            except MpsError:
                continue  # daemon not answering: counted from the readings (_unanswering)
            self._see_servers(uuid, pids)
            for pid in pids:
                with contextlib.suppress(MpsError):
                    if daemon.server_status(pid) == ServerStatus.FAULT:
                        out.append((uuid, pid))
                        break
        return out

    def _faulted_in(self, state: GpuState) -> tuple[set[str], list[tuple[str, int]]]:
        """The GPUs whose daemon the reading saw whole (``gpus[].mps`` without an ``error``, as ``/gpu/info``
        shows it), and the FAULT servers among them."""
        mine = set(self._uuids())
        seen: set[str] = set()
        out: list[tuple[str, int]] = []
        for gpu in state.info.get("gpus", []):
            uuid = gpu.get("uuid")
            daemon = gpu.get("mps") or {}
            if uuid not in mine or daemon.get("error") or not daemon.get("healthy"):
                continue  # a partial reading: ask the daemon itself
            seen.add(str(uuid))
            self._see_servers(str(uuid), [int(x["pid"]) for x in daemon.get("servers") or []])
            for server in daemon.get("servers") or []:
                if server.get("status") == ServerStatus.FAULT.value:
                    out.append((str(uuid), int(server["pid"])))
                    break
        return seen, out

    def ready(self, gpu_uuid: str) -> bool:
        """No server of this GPU in FAULT. Raises MpsError when the daemon does not answer."""
        daemon = self.fleet.daemon(gpu_uuid)
        return all(daemon.server_status(pid) != ServerStatus.FAULT for pid in daemon.server_pids())

    def terminate_client(self, gpu_uuid: str, client_pid: int) -> None:
        """``terminate_client`` on the server that has this client; best effort, never raises."""
        try:
            daemon = self.fleet.daemon(gpu_uuid)
            for spid in daemon.server_pids():
                if client_pid in daemon.client_pids(spid):
                    daemon.terminate_client(spid, client_pid)
                    return
        except (MpsError, KeyError):
            return

    def restart_daemon(self, gpu_uuid: str) -> None:
        """Stop and start this GPU's daemon with the defaults it had. Raises MpsError."""
        daemon = self.fleet.daemon(gpu_uuid)
        defaults = daemon.last_defaults or MpsDefaults()
        watched = self._watch.get(gpu_uuid)
        if watched is not None and watched.daemon_pid is None:
            # The daemon died: its servers are orphans no `quit` reaches (and a scan may not tie them to the
            # pipe dir): end the ones colo saw. Their clients (the GPU's agents) are stopped by now.
            for pid, start in watched.servers.items():
                if self._alive(pid, start):
                    with contextlib.suppress(MpsError):
                        self._control().signal(pid, SIGKILL)
        try:
            daemon.stop()  # also kills what is left of a dead daemon: its server
            self._control().reap()  # a killed daemon's zombie still "holds" its pid file for a new one
            daemon.start(defaults)
        finally:
            self._watch[gpu_uuid] = self._learn(gpu_uuid)
            self.probe.reset(gpu_uuid)
        self._logs[gpu_uuid] = self._reader(daemon.paths.log_dir)
        self._hints.pop(gpu_uuid, None)
