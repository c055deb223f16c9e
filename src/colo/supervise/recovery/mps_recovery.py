"""MPS fault recovery, one GPU at a time: its phases (an enum with allowed transitions), what triggers it, and
the :class:`Recoveries` that drive every GPU's recovery from the supervisor's tick.

One path for every MPS failure: whatever noticed it (a :class:`RecoveryTrigger`) becomes a :class:`MpsFault`,
and :meth:`Recoveries.begin` starts the same phases for that GPU (agents on other GPUs are never touched)::

    (trigger) -> STOPPING -> WAITING -> RELAUNCHING -> DONE

- STOPPING: every agent on that GPU is held; ``terminate_client`` then the stop signal. Over when no agent on
  the GPU has a process.
- WAITING: until the GPU's MPS server is ACTIVE again (or gone); past ``fault_wait_secs`` the GPU's daemon is
  restarted with its settings.
- RELAUNCHING: the agents that were up are started again. Over when all are RUNNING (or gave up: FATAL,
  EXITED), or after ``relaunch_timeout_secs``.
- DONE: a :class:`RecoveryRecord` (detection to all RUNNING, in seconds) and an event are written.

Triggers (:class:`RecoveryTrigger`): the server says FAULT (:meth:`MpsHooks.faults`, once a second); the server
process died or the control daemon died or stopped answering (:meth:`MpsHooks.deaths`, every tick: process
liveness is cheap); an agent lost its CUDA context (exit code ``EXIT_CONTEXT_LOST``) while that GPU's MPS no
longer looks healthy (:meth:`MpsHooks.healthy`, asked at once); an agent's log shows an MPS error. Adding one:
a member here, a place that reports it as a :class:`MpsFault`, and — when the daemon must be restored as soon
as the agents are stopped rather than after ``fault_wait_secs`` — an entry in :data:`RESTORE_DAEMON_AT_ONCE`.
The phases do not change. ``docs/states.md`` draws this machine.

Each recovery records how long detection took (``detect_secs``: from the last moment the failed part was seen
healthy to the moment the failure was seen — an upper bound) and how long recovery took (``seconds``: from
detection to every agent of the GPU RUNNING again), as an event and in :attr:`Recoveries.recovered`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from colo.errors import ColoError
from colo.supervise.agent import Agent
from colo.supervise.snapshots import EventKind, RecoverySummary
from colo.supervise.state import AgentState


class RecoveryPhase(StrEnum):
    """Where one GPU's MPS fault recovery is."""

    STOPPING = "stopping"  # the GPU's agents are being stopped
    WAITING = "waiting"  # all stopped; waiting for the MPS server to be ACTIVE (or gone)
    RELAUNCHING = "relaunching"  # the agents that were up are starting again
    DONE = "done"  # recorded; the recovery is forgotten


ALLOWED: dict[RecoveryPhase, frozenset[RecoveryPhase]] = {
    RecoveryPhase.STOPPING: frozenset(
        {
            RecoveryPhase.WAITING,  # STOPPING -> WAITING: no agent on the GPU has a process any more
        }
    ),
    RecoveryPhase.WAITING: frozenset(
        {
            RecoveryPhase.RELAUNCHING,  # WAITING -> RELAUNCHING: server ACTIVE/gone, or daemon restarted
        }
    ),
    RecoveryPhase.RELAUNCHING: frozenset(
        {
            RecoveryPhase.DONE,  # RELAUNCHING -> DONE: every agent settled, or the relaunch timed out
        }
    ),
    RecoveryPhase.DONE: frozenset(),
}


class RecoveryTrigger(StrEnum):
    """What noticed the MPS failure that started a recovery."""

    SERVER_FAULT = "server_fault"  # get_server_status <pid> answered FAULT
    CLIENT_MPS_ERROR = "client_mps_error"  # an agent's log showed an MPS error (it died of it)
    SERVER_DIED = "server_died"  # a server process colo saw on the GPU is gone while agents used it
    DAEMON_DIED = "daemon_died"  # the GPU's control daemon process is gone (or stopped answering)
    CLIENT_RPC_FAILURE = "client_rpc_failure"  # an agent lost its CUDA context and the GPU's MPS is unhealthy


#: Triggers after which the GPU's daemon is restored as soon as the agents are stopped (a FAULT server clears
#: by itself once its clients are gone; a dead daemon does not come back). A killed daemon's server and clients
#: keep running, but no new client can connect until a daemon runs in that pipe dir again; whether the old
#: server would serve the clients of a new daemon is not known, so colo is safe: it stops the GPU's agents,
#: stops what is left of the old daemon (its server), starts a new one with the same settings, relaunches.
RESTORE_DAEMON_AT_ONCE: frozenset[RecoveryTrigger] = frozenset({RecoveryTrigger.DAEMON_DIED})

#: How long recovery lets a GPU's agent shut down after its stop signal before SIGKILL (at most the agent's own
#: ``stop_wait_secs``). Its CUDA context is gone or poisoned, so there is nothing left to drain, and a process
#: whose MPS server died can hang in CUDA's teardown: waiting the usual 10 s would be 10 s of the whole GPU.
RECOVERY_STOP_WAIT_SECS = 1.0


class RecoveryTransitionError(Exception):
    """A phase change not in :data:`ALLOWED`: a bug in colo, never a user error."""


def check_transition(old: RecoveryPhase, new: RecoveryPhase) -> None:
    """Raise RecoveryTransitionError unless ``old -> new`` is allowed."""
    if new not in ALLOWED[old]:
        raise RecoveryTransitionError(f"{old.value} -> {new.value} is not an allowed recovery transition")


@dataclass(frozen=True)
class MpsFault:
    """A GPU (``gpu_uuid``) whose MPS is failing: what said so (``trigger``, ``detail``), the client pid if
    named, and ``seen_ok_at`` (monotonic seconds: when the failed part was last seen healthy; None unknown)."""

    gpu_uuid: str
    detail: str
    client_pid: int | None = None
    trigger: RecoveryTrigger = RecoveryTrigger.SERVER_FAULT
    seen_ok_at: float | None = None


class MpsHooks(Protocol):
    """What recovery needs from the per-GPU MPS daemons (``colo.supervise.recovery.mps_hooks.FleetHooks`` adapts
    ``colo.gpu.mps.daemon``)."""

    def faults(self) -> list[MpsFault]:
        """GPUs whose MPS server reports FAULT now, with log hints (asked once a second)."""
        ...

    def deaths(self) -> list[MpsFault]:
        """GPUs whose control daemon or a server process colo saw died since the last call (every tick:
        process liveness only, no MPS command). Each death is reported once."""
        ...

    def clients(self) -> dict[str, set[int]]:
        """Per GPU, the client pids of its servers in the last GPU reading (GPUs read whole only)."""
        ...

    def healthy(self, gpu_uuid: str) -> bool:
        """A fresh look at this GPU's MPS: daemon and servers alive, the daemon answers (one bounded round
        trip), no server in FAULT. Never raises."""
        ...

    def ready(self, gpu_uuid: str) -> bool:
        """True when no server of this GPU's daemon is in FAULT (ACTIVE, or none running)."""
        ...

    def terminate_client(self, gpu_uuid: str, client_pid: int) -> None:
        """Ask the GPU's MPS server to end this client (best effort; never raises)."""
        ...

    def restart_daemon(self, gpu_uuid: str) -> None:
        """Quit and start again the GPU's MPS daemon (re-applying its defaults). Raises MpsError."""
        ...


@dataclass
class Recovery:
    """One GPU's MPS fault recovery in progress (monotonic seconds)."""

    gpu_uuid: str
    trigger: RecoveryTrigger
    detected_at: float
    agents: list[str]
    phase_at: float
    phase: RecoveryPhase = RecoveryPhase.STOPPING
    culprit: str | None = None
    daemon_restarted: bool = False
    detect_secs: float | None = None
    phase_secs: dict[RecoveryPhase, float] = field(default_factory=dict)

    def move(self, new: RecoveryPhase, now: float) -> None:
        """Enter ``new`` (checked against :data:`ALLOWED`) at ``now``; the time spent in the old phase is kept."""
        check_transition(self.phase, new)
        self.phase_secs[self.phase] = now - self.phase_at
        self.phase, self.phase_at = new, now


@dataclass
class RecoveryRecord:
    """A finished recovery: how long from detection to every agent RUNNING again (seconds)."""

    gpu_uuid: str
    seconds: float
    agents: tuple[str, ...]
    culprit: str | None
    daemon_restarted: bool
    trigger: RecoveryTrigger = RecoveryTrigger.SERVER_FAULT
    detect_secs: float | None = None
    ok: bool = True
    phase_secs: Mapping[RecoveryPhase, float] = field(default_factory=dict)

    def phases_text(self) -> str:
        """``stop_s=0.41 wait_s=0.00 relaunch_s=3.20``: where the recovery's seconds went."""
        names = {RecoveryPhase.STOPPING: "stop", RecoveryPhase.WAITING: "wait", RecoveryPhase.RELAUNCHING: "relaunch"}
        return " ".join(f"{names[ph]}_s={self.phase_secs[ph]:.2f}" for ph in names if ph in self.phase_secs)

    def summary(self) -> RecoverySummary:
        """The frozen form the snapshot carries (and ``/metrics`` reads)."""
        return RecoverySummary(
            self.gpu_uuid, self.trigger.value, self.detect_secs, self.seconds, self.daemon_restarted, self.ok
        )


#: Records an event: (kind, agent, message, gpu).
EventSink = Callable[[EventKind, str | None, str, str | None], object]

_UP = (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING, AgentState.BACKOFF)
_SETTLED = (AgentState.RUNNING, AgentState.FATAL, AgentState.EXITED)


class Recoveries:
    """Every GPU's recovery in progress (``active``, by GPU UUID) and those finished (``recovered``)."""

    def __init__(
        self,
        *,
        mps: MpsHooks | None,
        event: EventSink,
        fault_wait_secs: float = 30.0,
        relaunch_timeout_secs: float = 600.0,
    ) -> None:
        self.mps = mps
        self._event = event
        self.fault_wait_secs = fault_wait_secs
        self.relaunch_timeout_secs = relaunch_timeout_secs
        self.active: dict[str, Recovery] = {}
        self.recovered: list[RecoveryRecord] = []

    def __contains__(self, gpu_uuid: object) -> bool:
        return gpu_uuid in self.active

    def get(self, gpu_uuid: str) -> Recovery | None:
        return self.active.get(gpu_uuid)

    def begin(
        self, fault: MpsFault, culprit: str | None, on_gpu: list[Agent], retiring: Collection[str], now: float
    ) -> None:
        """(trigger) -> STOPPING: hold and stop every agent of ``on_gpu``; remember those that were up."""
        uuid = fault.gpu_uuid
        was_up = [a.name for a in on_gpu if a.state in _UP and a.name not in retiring]
        detect = max(0.0, now - fault.seen_ok_at) if fault.seen_ok_at is not None else None
        blame = f"; faulting client: {culprit}" if culprit else "; faulting client not named in the logs"
        if fault.trigger not in (RecoveryTrigger.SERVER_FAULT, RecoveryTrigger.CLIENT_MPS_ERROR):
            blame = f"; faulting client: {culprit}" if culprit else ""
        within = f" (detected within {detect:.2f} s)" if detect is not None else ""
        self._event(
            EventKind.MPS_FAULT,
            culprit,
            f"MPS failure on {uuid} [{fault.trigger.value}]: {fault.detail}{within}{blame}; "
            f"stopping {len(was_up)} agent(s) on that GPU",
            uuid,
        )
        # Recorded before the agents are stopped: their stop consults it (no terminate_client to a dead server).
        self.active[uuid] = Recovery(uuid, fault.trigger, now, was_up, now, culprit=culprit, detect_secs=detect)
        for a in on_gpu:
            a.hold = True
            if a.handle is not None and a.state in (AgentState.STARTING, AgentState.RUNNING):
                # terminate_client, then the stop signal, SIGKILL after RECOVERY_STOP_WAIT_SECS
                a.stop("MPS fault recovery", wait_secs=RECOVERY_STOP_WAIT_SECS)

    def tick(self, now: float, agents: Mapping[str, Agent], agents_on: Callable[[str], list[Agent]]) -> None:
        """Move every recovery on as far as it can go now."""
        for uuid, rec in list(self.active.items()):
            if rec.phase == RecoveryPhase.STOPPING:
                if not all(a.handle is None for a in agents_on(uuid)):
                    continue
                rec.move(RecoveryPhase.WAITING, now)
            if rec.phase == RecoveryPhase.WAITING:
                if not self._waited(rec, now):
                    continue
                for a in agents_on(uuid):
                    a.release()
                for name in rec.agents:
                    if name in agents:
                        agents[name].start("MPS fault recovery")
                rec.move(RecoveryPhase.RELAUNCHING, now)
                continue
            if rec.phase == RecoveryPhase.RELAUNCHING:
                mine = [agents[n] for n in rec.agents if n in agents]
                settled = all(a.state in _SETTLED for a in mine)
                if not settled and now - rec.phase_at < self.relaunch_timeout_secs:
                    continue
                rec.move(RecoveryPhase.DONE, now)
                self._finish(rec, mine, now)
                del self.active[uuid]

    def _waited(self, rec: Recovery, now: float) -> bool:
        """WAITING is over: the server is ready, or the daemon was restarted (at once for some triggers,
        else past ``fault_wait_secs``)."""
        if self.mps is None:
            return True
        at_once = rec.trigger in RESTORE_DAEMON_AT_ONCE
        ready = not at_once and self._safe_ready(rec.gpu_uuid)
        if ready:
            return True
        if not at_once and now - rec.phase_at < self.fault_wait_secs:
            return False
        try:
            self.mps.restart_daemon(rec.gpu_uuid)
            rec.daemon_restarted = True
            why = "at once" if at_once else "still FAULT"
            self._event(EventKind.DAEMON, None, f"restarted the MPS daemon of {rec.gpu_uuid} ({why})", rec.gpu_uuid)
        except ColoError as exc:
            self._event(EventKind.DAEMON, None, f"could not restart the MPS daemon: {exc}", rec.gpu_uuid)
        return True

    def _finish(self, rec: Recovery, mine: list[Agent], now: float) -> None:
        secs = now - rec.detected_at
        running = len([a for a in mine if a.state == AgentState.RUNNING])
        ok = running == len(mine)
        record = RecoveryRecord(
            rec.gpu_uuid,
            secs,
            tuple(rec.agents),
            rec.culprit,
            rec.daemon_restarted,
            rec.trigger,
            rec.detect_secs,
            ok,
            dict(rec.phase_secs),
        )
        self.recovered.append(record)
        blame = f" (faulting client: {rec.culprit})" if rec.culprit else ""
        detect = f"detect_s={rec.detect_secs:.2f} " if rec.detect_secs is not None else ""
        self._event(
            EventKind.RESTARTED,
            None,
            f"MPS fault recovery on {rec.gpu_uuid} [{rec.trigger.value}] {'done' if ok else 'incomplete'} in "
            f"{secs:.1f} s: {running}/{len(mine)} agents RUNNING{blame}; {detect}recover_s={secs:.2f} "
            f"({record.phases_text()})",
            rec.gpu_uuid,
        )

    def _safe_ready(self, uuid: str) -> bool:
        assert self.mps is not None
        try:
            return self.mps.ready(uuid)
        except ColoError:
            return False
