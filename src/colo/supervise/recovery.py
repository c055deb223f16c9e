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

Adding a trigger (issue 12: the server process died, the control daemon died, an agent's CUDA calls fail with
an MPS RPC error): add a member to :class:`RecoveryTrigger`, have :class:`MpsHooks.faults` (or the supervisor's
log scan) report it as a :class:`MpsFault` with that trigger, and, when the daemon must be restored at once
rather than after ``fault_wait_secs``, list it in :data:`RESTORE_DAEMON_AT_ONCE`. The phases do not change.
``docs/states.md`` draws this machine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from colo.errors import ColoError
from colo.supervise.agent import Agent
from colo.supervise.snapshots import EventKind
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


#: Triggers after which the GPU's daemon is restored as soon as the agents are stopped (none yet: a FAULT
#: server clears by itself once its clients are gone). Issue 12's daemon death belongs here.
RESTORE_DAEMON_AT_ONCE: frozenset[RecoveryTrigger] = frozenset()


class RecoveryTransitionError(Exception):
    """A phase change not in :data:`ALLOWED`: a bug in colo, never a user error."""


def check_transition(old: RecoveryPhase, new: RecoveryPhase) -> None:
    """Raise RecoveryTransitionError unless ``old -> new`` is allowed."""
    if new not in ALLOWED[old]:
        raise RecoveryTransitionError(f"{old.value} -> {new.value} is not an allowed recovery transition")


@dataclass(frozen=True)
class MpsFault:
    """A GPU (``gpu_uuid``) whose MPS is failing: what said so (``trigger``, ``detail``) and the client pid if
    named."""

    gpu_uuid: str
    detail: str
    client_pid: int | None = None
    trigger: RecoveryTrigger = RecoveryTrigger.SERVER_FAULT


class MpsHooks(Protocol):
    """What recovery needs from the per-GPU MPS daemons (``colo.supervise.mps_hooks.FleetHooks`` adapts
    ``colo.gpu.mps.daemon``)."""

    def faults(self) -> list[MpsFault]:
        """GPUs whose MPS is failing now (today: a server reports FAULT), with log hints."""
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

    def move(self, new: RecoveryPhase, now: float) -> None:
        """Enter ``new`` (checked against :data:`ALLOWED`) at ``now``."""
        check_transition(self.phase, new)
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
        blame = f"; faulting client: {culprit}" if culprit else "; faulting client not named in the logs"
        self._event(
            EventKind.MPS_FAULT,
            culprit,
            f"MPS fault on {uuid}: {fault.detail}{blame}; stopping {len(was_up)} agent(s) on that GPU",
            uuid,
        )
        for a in on_gpu:
            a.hold = True
            if a.handle is not None and a.state in (AgentState.STARTING, AgentState.RUNNING):
                a.stop("MPS fault recovery")  # terminate_client, then the stop signal
        self.active[uuid] = Recovery(uuid, fault.trigger, now, was_up, now, culprit=culprit)

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
        self.recovered.append(
            RecoveryRecord(rec.gpu_uuid, secs, tuple(rec.agents), rec.culprit, rec.daemon_restarted, rec.trigger)
        )
        blame = f" (faulting client: {rec.culprit})" if rec.culprit else ""
        self._event(
            EventKind.RESTARTED,
            None,
            f"MPS fault recovery on {rec.gpu_uuid} {'done' if ok else 'incomplete'} in {secs:.1f} s: "
            f"{running}/{len(mine)} agents RUNNING{blame}",
            rec.gpu_uuid,
        )

    def _safe_ready(self, uuid: str) -> bool:
        assert self.mps is not None
        try:
            return self.mps.ready(uuid)
        except ColoError:
            return False
