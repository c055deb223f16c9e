"""MPS fault recovery, one GPU at a time: its phases (an enum with allowed transitions), what triggers it, and
the :class:`Recoveries` that drive every GPU's recovery from the supervisor's tick.

One path for every MPS failure: whatever noticed it (a :class:`RecoveryTrigger`) becomes a :class:`MpsFault`,
and :meth:`Recoveries.begin` starts the same phases for that GPU (agents on other GPUs are never touched)::

    (trigger) -> STOPPING -> WAITING -> RELAUNCHING -> DONE
                    ^                        |
                    +---- another failure ---+
                                 WAITING -> DONE: gave up (its bounds, below)

- STOPPING: every agent on that GPU is held; ``terminate_client`` then the stop signal, SIGKILL after
  :data:`RECOVERY_STOP_WAIT_SECS`. Over when no agent on the GPU has a process, or after
  :data:`STOPPING_BOUND_SECS` (an agent stuck in CUDA teardown does not hold the GPU: it is relaunched once
  it is gone). A hung server or daemon (``server_hung``, ``daemon_hung``) is SIGKILLed first, before the
  agents are stopped (SIGKILL reaches a stopped process; its clients cannot finish their teardown without it).
- WAITING: until the GPU's MPS server is ACTIVE again (or gone); past ``fault_wait_secs`` the GPU's daemon is
  restarted with its settings — at once when the daemon is dead, hung or does not answer. A daemon that
  cannot be restarted is tried again every :data:`RESTORE_RETRY_SECS`: nothing is relaunched without an
  answering daemon (a client whose pipe dir has none runs as a plain CUDA context, outside its limits).
  **Bounded**: a daemon that could not be restarted for :data:`RESTORE_GIVE_UP_SECS`, or a recovery whose
  relaunch failed :data:`MAX_RECOVERY_ROUNDS` times, gives up here (WAITING -> DONE): its agents become FATAL
  and one ``fatal`` event says why and what to check; the GPU is left alone until an agent there is started
  again (then the supervisor begins its recovery again when its daemon does not answer).
- RELAUNCHING: the agents that were up are started again. Over when all are RUNNING (or gave up: FATAL,
  EXITED), or after ``relaunch_timeout_secs``. **Another failure** of the GPU's MPS now (the new daemon or
  server dies or hangs, a server FAULT, an agent outside MPS) sends the recovery back to STOPPING: the same
  record, its trigger kept, ``refaults`` counted, and — when it fails the GPU's MPS, not one agent — a new
  ``round``. An agent the supervisor gave up on (:meth:`Recoveries.abandon`: found outside its plan too often)
  is not started again here but made FATAL.
- DONE: a :class:`RecoveryRecord` (detection to all RUNNING, in seconds) and an event are written.

``not_as_planned`` (an agent whose process is not what its plan says: :mod:`colo.supervise.recovery.membership`)
recovers only the agents that differ (``Recovery.only``); any other failure widens it to the whole GPU.

Triggers (:class:`RecoveryTrigger`): the server says FAULT (:meth:`MpsHooks.faults`, once a second); the server
process died or the control daemon died (:meth:`MpsHooks.deaths`, every tick: process liveness is cheap); a
server or the daemon is hung (stopped, or the daemon does not answer: the probe, also in ``deaths``); an
agent's process is not what its plan says (the supervisor, at every GPU reading); an agent lost its CUDA
context (exit code ``EXIT_CONTEXT_LOST``) while that GPU's MPS no longer looks healthy (:meth:`MpsHooks.healthy`, asked at once); an agent's log shows an MPS error. Adding one:
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
from colo.gpu.mps.env import log_dir_of, pipe_dir_of
from colo.supervise.agent import Agent
from colo.supervise.snapshots import EventKind, EventSink, RecoverySummary
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
            RecoveryPhase.DONE,  # WAITING -> DONE: gave up (daemon not restorable, or the relaunch failed too often)
        }
    ),
    RecoveryPhase.RELAUNCHING: frozenset(
        {
            RecoveryPhase.DONE,  # RELAUNCHING -> DONE: every agent settled, or the relaunch timed out
            RecoveryPhase.STOPPING,  # RELAUNCHING -> STOPPING: another MPS failure while the agents start
        }
    ),
    RecoveryPhase.DONE: frozenset(),
}


class RecoveryTrigger(StrEnum):
    """What noticed the MPS failure that started a recovery."""

    SERVER_FAULT = "server_fault"  # get_server_status <pid> answered FAULT
    CLIENT_MPS_ERROR = "client_mps_error"  # an agent's log showed an MPS error (it died of it)
    SERVER_DIED = "server_died"  # a server process colo saw on the GPU is gone while agents used it
    DAEMON_DIED = "daemon_died"  # the GPU's control daemon process is gone
    CLIENT_RPC_FAILURE = "client_rpc_failure"  # an agent lost its CUDA context and the GPU's MPS is unhealthy
    SERVER_HUNG = "server_hung"  # a server process is stopped (state T): alive, serving nothing new
    DAEMON_HUNG = "daemon_hung"  # the control daemon is stopped, or did not answer the probe (mps_probe)
    NOT_AS_PLANNED = "not_as_planned"  # an agent's process is not what its plan says (an MPS client or not)


#: Triggers after which the GPU's daemon is restored as soon as the agents are stopped (a FAULT server clears
#: by itself once its clients are gone; a dead daemon does not come back). A killed daemon's server and clients
#: keep running, but no new client can connect until a daemon runs in that pipe dir again; whether the old
#: server would serve the clients of a new daemon is not known, so colo is safe: it stops the GPU's agents,
#: stops what is left of the old daemon (its server), starts a new one with the same settings, relaunches.
RESTORE_DAEMON_AT_ONCE: frozenset[RecoveryTrigger] = frozenset(
    {RecoveryTrigger.DAEMON_DIED, RecoveryTrigger.SERVER_HUNG, RecoveryTrigger.DAEMON_HUNG}
)

#: Triggers whose MPS processes are SIGKILLed as the recovery begins, before the agents are stopped: a hung
#: server (or daemon) answers nothing, and its clients hang in CUDA teardown until it is gone.
END_AT_ONCE: frozenset[RecoveryTrigger] = frozenset({RecoveryTrigger.SERVER_HUNG, RecoveryTrigger.DAEMON_HUNG})

#: How long recovery lets a GPU's agent shut down after its stop signal before SIGKILL (at most the agent's own
#: ``stop_wait_secs``). Its CUDA context is gone or poisoned, so there is nothing left to drain, and a process
#: whose MPS server died can hang in CUDA's teardown: waiting the usual 10 s would be 10 s of the whole GPU.
#: On the H100 a graceful stop did not finish inside 1 s (uvicorn's shutdown, then torch's teardown against a
#: dead server: stop_s 1.69 of a 18.4 s recovery), so the stop signal is only a courtesy: SIGKILL follows at once.
RECOVERY_STOP_WAIT_SECS = 0.2
#: STOPPING is over this long after it began (seconds) even if an agent still has a process: one stuck in CUDA
#: teardown past its SIGKILL (uninterruptible) must not hold its GPU's recovery; it is started again once gone.
STOPPING_BOUND_SECS = RECOVERY_STOP_WAIT_SECS + 2.0
#: A daemon restart that failed is tried again after this many seconds (the agents wait: nothing relaunches
#: without an answering daemon).
RESTORE_RETRY_SECS = 1.0
#: A recovery whose daemon restarts have failed for this long (seconds, from the first failure) gives up: its
#: agents become FATAL. Long enough for what passes by itself (an old server still tearing down, a GPU being
#: reset); past it the cause needs a person, and the agents were down the whole time anyway.
RESTORE_GIVE_UP_SECS = 60.0
#: A recovery gives up when its agents' relaunch fails this many times (each failure of the GPU's MPS while
#: they start sends it back to STOPPING: a new round). The worst drill needs two (a second fault during the
#: relaunch); a third in a row means the restored MPS does not hold.
MAX_RECOVERY_ROUNDS = 3


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

    def answering(self, gpu_uuid: str) -> bool:
        """Whether this GPU's daemon answers (the probe's last verdict; no command sent): False while it is
        dead, hung or not answering. True for a GPU colo does not watch."""
        ...

    def end_hung(self, gpu_uuid: str) -> None:
        """SIGKILL this GPU's daemon and servers (hung: they answer nothing) and forget them; never raises."""
        ...

    def gpu_processes(self) -> dict[int, tuple[str, bool]] | None:
        """From a GPU reading newer than the last call: every compute process, pid -> (GPU UUID, listed as an
        MPS client). None when there is no new reading (or the GPUs could not be read)."""
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
    restore_daemon: bool = False  # the daemon is restored as soon as the agents are stopped
    only: set[str] | None = None  # the agents recovered (not_as_planned); None: every agent of the GPU
    refaults: int = 0  # further failures seen during this recovery
    retry_at: float = 0.0  # a failed daemon restart is tried again from then on
    rounds: int = 1  # relaunch attempts begun or pending: 1 + the failures of the GPU's MPS while relaunching
    restore_failed_at: float | None = None  # the first failed daemon restart of this wait
    restore_tries: int = 0  # failed daemon restarts since then
    restore_error: str = ""  # what the last one said (a repeat of it is not an event again)
    ending: str | None = None  # why it gives up (at its next WAITING); None: it goes on
    abandoned: dict[str, str] = field(default_factory=dict)  # agent -> why it is made FATAL, not relaunched

    def move(self, new: RecoveryPhase, now: float) -> None:
        """Enter ``new`` (checked against :data:`ALLOWED`) at ``now``; the time spent in the old phase is kept
        (added up when a phase is entered again)."""
        check_transition(self.phase, new)
        self.phase_secs[self.phase] = self.phase_secs.get(self.phase, 0.0) + now - self.phase_at
        self.phase, self.phase_at = new, now

    def mine(self, on_gpu: list[Agent]) -> list[Agent]:
        """The agents of ``on_gpu`` this recovery stops and relaunches."""
        return [a for a in on_gpu if self.only is None or a.name in self.only]


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
    refaults: int = 0
    gave_up: str | None = None  # why the recovery gave up (its agents FATAL); None: it ran to the end

    def phases_text(self) -> str:
        """``stop_s=0.41 wait_s=0.00 relaunch_s=3.20``: where the recovery's seconds went."""
        names = {RecoveryPhase.STOPPING: "stop", RecoveryPhase.WAITING: "wait", RecoveryPhase.RELAUNCHING: "relaunch"}
        return " ".join(f"{names[ph]}_s={self.phase_secs[ph]:.2f}" for ph in names if ph in self.phase_secs)

    def summary(self) -> RecoverySummary:
        """The frozen form the snapshot carries (and ``/metrics`` reads)."""
        return RecoverySummary(
            self.gpu_uuid, self.trigger.value, self.detect_secs, self.seconds, self.daemon_restarted, self.ok
        )


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
        #: GPUs whose recovery gave up, with its trigger: left alone until an agent there is asked to run
        self.given_up: dict[str, RecoveryTrigger] = {}

    def __contains__(self, gpu_uuid: object) -> bool:
        return gpu_uuid in self.active

    def get(self, gpu_uuid: str) -> Recovery | None:
        return self.active.get(gpu_uuid)

    def begin(
        self,
        fault: MpsFault,
        culprit: str | None,
        on_gpu: list[Agent],
        retiring: Collection[str],
        now: float,
        only: Collection[str] | None = None,
    ) -> None:
        """(trigger) -> STOPPING: hold and stop every agent of ``on_gpu`` (those named in ``only``, when
        given); remember those that were up. A hung server or daemon is SIGKILLed first."""
        uuid = fault.gpu_uuid
        if only is not None:
            on_gpu = [a for a in on_gpu if a.name in only]
        was_up = [a.name for a in on_gpu if a.state in _UP and a.name not in retiring and not a.giving_up]
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
        rec = Recovery(uuid, fault.trigger, now, was_up, now, culprit=culprit, detect_secs=detect)
        rec.restore_daemon = fault.trigger in RESTORE_DAEMON_AT_ONCE
        rec.only = set(only) if only is not None else None
        self.active[uuid] = rec
        self.given_up.pop(uuid, None)
        self._end_hung(fault)
        self._stop(on_gpu)

    def _end_hung(self, fault: MpsFault) -> None:
        if self.mps is not None and fault.trigger in END_AT_ONCE:
            self.mps.end_hung(fault.gpu_uuid)
            self._event(
                EventKind.DAEMON, None, f"SIGKILLed the hung MPS daemon and servers of {fault.gpu_uuid}", fault.gpu_uuid
            )

    @staticmethod
    def _stop(agents: list[Agent]) -> None:
        for a in agents:
            a.hold = True
            if a.handle is not None and a.state in (AgentState.STARTING, AgentState.RUNNING):
                # terminate_client, then the stop signal, SIGKILL after RECOVERY_STOP_WAIT_SECS
                a.stop("MPS fault recovery", wait_secs=RECOVERY_STOP_WAIT_SECS)

    def refault(
        self,
        fault: MpsFault,
        on_gpu: list[Agent],
        retiring: Collection[str],
        now: float,
        only: Collection[str] | None = None,
    ) -> bool:
        """Another failure of a GPU whose recovery runs (``on_gpu``: every agent there; ``only``: the agents a
        ``not_as_planned`` failure names). While the agents start (RELAUNCHING) it sends the recovery back to
        STOPPING (RELAUNCHING -> STOPPING): they are held and stopped again. Before that (STOPPING, WAITING) it
        only adds what it needs: the daemon restored at once, more agents. A FAULT seen before the relaunch, or a
        daemon failure while its restart keeps failing, is the one being recovered: ignored. True when the
        failure was taken."""
        rec = self.active[fault.gpu_uuid]
        relaunching = rec.phase == RecoveryPhase.RELAUNCHING
        if fault.trigger == RecoveryTrigger.SERVER_FAULT and not relaunching:
            return False  # the server stays FAULT until its clients are gone: the same failure
        if fault.trigger == RecoveryTrigger.NOT_AS_PLANNED and rec.only is None and not relaunching:
            return False  # every agent of the GPU is being recovered already
        if fault.trigger in RESTORE_DAEMON_AT_ONCE and rec.restore_failed_at is not None and not relaunching:
            return False  # the daemon colo cannot restart yet (tried again every RESTORE_RETRY_SECS): the same
        rec.refaults += 1
        rec.restore_daemon = rec.restore_daemon or fault.trigger in RESTORE_DAEMON_AT_ONCE
        if fault.trigger == RecoveryTrigger.NOT_AS_PLANNED and rec.only is not None and only is not None:
            rec.only |= set(only)
        else:
            rec.only = None  # the GPU's MPS failed: every agent on it
        if relaunching and rec.only is None:
            rec.rounds += 1
            if rec.rounds > MAX_RECOVERY_ROUNDS and rec.ending is None:
                rec.ending = (
                    f"its agents' relaunch failed {MAX_RECOVERY_ROUNDS} times in a row (last: [{fault.trigger.value}]"
                    f" {fault.detail})"
                )
        mine = rec.mine(on_gpu)
        up = [a.name for a in mine if a.state in _UP and a.name not in retiring and not a.giving_up]
        rec.agents = list(dict.fromkeys([*rec.agents, *up]))
        self._event(
            EventKind.MPS_FAULT,
            None,
            f"another MPS failure on {fault.gpu_uuid} during its recovery ({rec.phase.value}) [{fault.trigger.value}]:"
            f" {fault.detail}" + ("; stopping its agents again" if relaunching else ""),
            fault.gpu_uuid,
        )
        self._end_hung(fault)
        if relaunching:
            rec.move(RecoveryPhase.STOPPING, now)
        self._stop(mine)
        return True

    def abandon(self, gpu_uuid: str, agent: str, reason: str) -> None:
        """At this GPU's relaunch, ``agent`` is not started again but made FATAL with ``reason`` (the supervisor
        gave up on it: found outside its plan too often). No-op when no recovery runs there."""
        rec = self.active.get(gpu_uuid)
        if rec is not None:
            rec.abandoned[agent] = reason

    def tick(self, now: float, agents: Mapping[str, Agent], agents_on: Callable[[str], list[Agent]]) -> None:
        """Move every recovery on as far as it can go now."""
        for uuid, rec in list(self.active.items()):
            if rec.phase == RecoveryPhase.STOPPING:
                left = [a.name for a in rec.mine(agents_on(uuid)) if a.handle is not None]
                if left and now - rec.phase_at < STOPPING_BOUND_SECS:
                    continue
                if left:
                    self._event(
                        EventKind.UNHEALTHY,
                        None,
                        f"{', '.join(left)} still ha{'s' if len(left) == 1 else 've'} a process "
                        f"{STOPPING_BOUND_SECS:g} s into the recovery of {uuid} (stuck in CUDA teardown?): going on;"
                        " each starts again once its process is gone",
                        uuid,
                    )
                rec.move(RecoveryPhase.WAITING, now)
            if rec.phase == RecoveryPhase.WAITING:
                waited = rec.ending is None and self._waited(rec, now)
                if rec.ending is not None:
                    self._give_up(rec, now, agents, agents_on(uuid))
                    del self.active[uuid]
                    continue
                if not waited:
                    continue
                for a in rec.mine(agents_on(uuid)):
                    a.release()
                for name in rec.agents:
                    if name in rec.abandoned and name in agents:
                        agents[name].give_up(rec.abandoned[name])  # STOPPED/BACKOFF -> FATAL, not relaunched
                    elif name in agents:
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
        """WAITING is over: the server is ready (and the daemon answers), or the daemon was restarted (at once
        when it is dead, hung or not answering, else past ``fault_wait_secs``). A failed restart keeps the
        recovery WAITING and is tried again after :data:`RESTORE_RETRY_SECS`; one that fails
        :data:`RESTORE_GIVE_UP_SECS` after the first failure sets ``rec.ending``: the recovery gives up."""
        if self.mps is None:
            return True
        if now < rec.retry_at:
            return False
        uuid = rec.gpu_uuid
        at_once = rec.restore_daemon or not self.mps.answering(uuid)
        if rec.trigger == RecoveryTrigger.NOT_AS_PLANNED and not at_once:
            at_once = not self.mps.healthy(uuid)  # the agent found outside MPS: is its daemon there?
            if not at_once:
                return True
        ready = not at_once and self._safe_ready(uuid)
        if ready:
            return True
        if not at_once and now - rec.phase_at < self.fault_wait_secs:
            return False
        try:
            self.mps.restart_daemon(uuid)
        except ColoError as exc:
            rec.retry_at = now + RESTORE_RETRY_SECS
            rec.restore_tries += 1
            first = rec.restore_failed_at = now if rec.restore_failed_at is None else rec.restore_failed_at
            if now - first >= RESTORE_GIVE_UP_SECS:
                rec.ending = (
                    f"its MPS daemon could not be restarted for {now - first:.0f} s ({rec.restore_tries} tries;"
                    f" last: {exc})"
                )
                return False
            if str(exc) != rec.restore_error:  # one event per new reason, not one per try
                rec.restore_error = str(exc)
                self._event(
                    EventKind.DAEMON,
                    None,
                    f"could not restart the MPS daemon of {uuid}: {exc}; its agents wait (tried again every"
                    f" {RESTORE_RETRY_SECS:g} s; given up {RESTORE_GIVE_UP_SECS:g} s after the first failure)",
                    uuid,
                )
            return False
        rec.restore_failed_at, rec.restore_tries, rec.restore_error = None, 0, ""
        rec.daemon_restarted, rec.restore_daemon = True, False
        why = "at once" if at_once else "still FAULT"
        self._event(EventKind.DAEMON, None, f"restarted the MPS daemon of {uuid} ({why})", uuid)
        return True

    def _give_up(self, rec: Recovery, now: float, agents: Mapping[str, Agent], on_gpu: list[Agent]) -> None:
        """WAITING -> DONE: the recovery gave up (``rec.ending`` says why). Every agent it was bringing back
        becomes FATAL (each stopped already, or once its process is gone); one ``fatal`` event says why and what
        to check; the GPU is left alone until an agent there is asked to run again."""
        assert rec.ending is not None
        rec.move(RecoveryPhase.DONE, now)
        for a in rec.mine(on_gpu):
            a.release()
        mine = [agents[n] for n in rec.agents if n in agents]
        names = [a.name for a in mine if a.state not in (AgentState.EXITED, AgentState.FATAL)]
        short = f"MPS recovery of {rec.gpu_uuid} gave up: {rec.ending}"
        for a in mine:
            a.give_up(rec.abandoned.get(a.name, short))
        self.given_up[rec.gpu_uuid] = rec.trigger
        secs = now - rec.detected_at
        self.recovered.append(
            RecoveryRecord(
                rec.gpu_uuid, secs, tuple(rec.agents), rec.culprit, rec.daemon_restarted, rec.trigger, rec.detect_secs,
                False, dict(rec.phase_secs), rec.refaults, rec.ending,
            )
        )
        self._event(EventKind.FATAL, None, give_up_text(rec, names, on_gpu, secs), rec.gpu_uuid)

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
            rec.refaults,
        )
        self.recovered.append(record)
        blame = f" (faulting client: {rec.culprit})" if rec.culprit else ""
        detect = f"detect_s={rec.detect_secs:.2f} " if rec.detect_secs is not None else ""
        self._event(
            EventKind.RESTARTED,
            None,
            f"MPS fault recovery on {rec.gpu_uuid} [{rec.trigger.value}] {'done' if ok else 'incomplete'} in "
            f"{secs:.1f} s: {running}/{len(mine)} agents RUNNING{blame}; {detect}recover_s={secs:.2f} "
            f"({record.phases_text()})" + (f"; {rec.refaults} further failure(s) during it" if rec.refaults else ""),
            rec.gpu_uuid,
        )

    def _safe_ready(self, uuid: str) -> bool:
        assert self.mps is not None
        try:
            return self.mps.ready(uuid)
        except ColoError:
            return False


def give_up_text(rec: Recovery, names: list[str], on_gpu: list[Agent], secs: float) -> str:
    """The one event of a recovery that gave up: the GPU, its trigger, why, which agents are FATAL now, and what a
    person checks before starting them again (the daemon's pipe and log dirs, ``colo logs``)."""
    uuid = rec.gpu_uuid
    env = next((a.setup.launch.env_dict() for a in on_gpu if a.setup.launch.mps_client), {})
    pipe, logs = pipe_dir_of(env), log_dir_of(env)
    where = f" (pipe dir {pipe}, its control.log and server.log in {logs})" if pipe and logs else ""
    agents = ", ".join(names) if names else "no agent"
    blame = f"; the faulting client named: {rec.culprit}" if rec.culprit else ""
    first = names[0] if names else "NAME"
    return (
        f"gave up the MPS fault recovery of {uuid} [{rec.trigger.value}] after {secs:.1f} s: {rec.ending}{blame};"
        f" FATAL now: {agents}. Check the GPU's MPS daemon{where} and the GPU (`colo mps status`, `nvidia-smi`),"
        f" and the agents' logs (`colo logs {first}`); then start them again (`colo agent start {first}`): colo"
        " restores the daemon first when it does not answer"
    )
