"""The loop over all agents: ticks their state machines, reads their logs, recovers GPUs from MPS faults,
and rolls configuration changes through one agent at a time.

Everything outside (processes, health probes, time, MPS, GPU memory) is injected, so the CPU tests drive
the whole loop with a fake clock, :class:`~colo.launch.runner.FakeRunner` and a fake :class:`MpsHooks`.

MPS fault recovery (its phases, triggers and allowed transitions) lives in :mod:`colo.supervise.recovery.mps_recovery`;
the supervisor feeds it what it detects: deaths of MPS processes (every tick, before the agents are looked at,
so a dead server's agents are held before they would respawn), MPS status polls (once a second), agents that
lost their CUDA context (exit code ``EXIT_CONTEXT_LOST``: recovery when a fresh look at the GPU's MPS is not
healthy, else only that agent restarts), agents dying with MPS errors in their logs, hung MPS processes (the
probe, every tick) and agents whose process is not what their plan says (:mod:`colo.supervise.recovery.membership`,
at every GPU reading). A failure of a GPU whose recovery runs goes to that recovery (``Recoveries.refault``),
and no MPS client starts while its GPU's daemon does not answer (the agents' launch gate). Recovery is
bounded: an agent found outside its plan too often is made FATAL (``OutsidePlan``), and a GPU whose recovery
gave up (``Recoveries.given_up``) is left alone until an agent there is asked to run again.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from colo.clock import Clock
from colo.errors import ColoError
from colo.gpu import procs
from colo.gpu.mps.env import pipe_dir_of
from colo.launch.health import Probe
from colo.launch.runner import Runner
from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST
from colo.supervise.agent import Agent, AgentSetup
from colo.supervise.logs import AgentLogs, LogScanner, scan_text
from colo.supervise.recovery.membership import Finding, MembershipWatch, OutsidePlan, judge, outside_plan_verdict
from colo.supervise.recovery.mps_recovery import (
    MpsFault,
    MpsHooks,
    Recoveries,
    RecoveryPhase,
    RecoveryRecord,
    RecoveryTrigger,
)
from colo.supervise.snapshots import AgentStatus, Event, EventKind
from colo.supervise.state import AgentState
from colo.supervise.store import Store
from colo.supervise.tune.history import UsageRecorder

#: How often (seconds) FAULT is looked for: every tick, so each new GPU reading (once a second) is looked at as
#: soon as it is taken. Deaths of MPS processes are checked every tick too (liveness only).
MPS_POLL_SECS = 0.5
MEMORY_POLL_SECS = 2.0
#: How often (seconds) each GPU's MPS client list (from the GPU reading) is compared with its agents.
CLIENT_CHECK_SECS = 2.0
ROTATE_CHECK_SECS = 30.0
#: Events also written into the agent's own log as ``--- colo: ...`` lines.
LOGGED_KINDS = frozenset({EventKind.STARTED, EventKind.RESTARTED, EventKind.ADOPTED, EventKind.EXITED})
#: Agent states whose process may hold a CUDA context on its GPU's MPS server.
_IN_USE = (AgentState.STARTING, AgentState.RUNNING)


#: Recoveries during which ``terminate_client`` is not sent: there is no server (or daemon) to do it.
_NO_SERVER_TO_ASK = frozenset(
    {
        RecoveryTrigger.SERVER_DIED,
        RecoveryTrigger.DAEMON_DIED,
        RecoveryTrigger.SERVER_HUNG,
        RecoveryTrigger.DAEMON_HUNG,
    }
)


@dataclass
class _Rolling:
    queue: deque[tuple[str, AgentSetup, str]] = field(default_factory=deque)
    current: str | None = None
    deadline: float = 0.0


class Supervisor:
    """Owns the :class:`Agent` objects (in start order: priority first) and drives them."""

    def __init__(
        self,
        *,
        runner: Runner,
        probe: Probe,
        clock: Clock,
        store: Store,
        logs: AgentLogs,
        mps: MpsHooks | None = None,
        gpu_memory: Callable[[Sequence[int]], dict[int, int]] | None = None,
        fault_wait_secs: float = 30.0,
        relaunch_timeout_secs: float = 600.0,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.runner = runner
        self.probe = probe
        self.clock = clock
        self.store = store
        self.logs = logs
        self.mps = mps
        self.gpu_memory = gpu_memory
        self.usage = usage
        self.agents: dict[str, Agent] = {}
        self._oom_signs: list[str] = []  # agents with an out-of-memory sign since take_ooms()
        self.recoveries = Recoveries(
            mps=mps,
            event=self.event,
            fault_wait_secs=fault_wait_secs,
            relaunch_timeout_secs=relaunch_timeout_secs,
        )
        self._retiring: set[str] = set()
        self._scanners: dict[str, LogScanner] = {}
        self._scanned_pid: dict[str, int | None] = {}
        self._suspects: dict[str, tuple[str, str | None]] = {}  # gpu_uuid -> (detail, culprit agent)
        self._lost: dict[str, tuple[str, float]] = {}  # gpu_uuid -> (agent that lost its context, when)
        self._client_misses: dict[int, int] = {}  # agent pid -> client-list checks in a row it was not listed
        self._told_foreign: set[int] = set()
        self._told_namespace: set[str] = set()
        self._next_client_check = 0.0
        self._membership = MembershipWatch()
        self._outside = OutsidePlan()
        self._rolling = _Rolling()
        self.shutting_down = False
        self._next_mps_poll = 0.0
        self._next_memory_poll = 0.0
        self._next_rotate = 0.0

    @property
    def recovered(self) -> list[RecoveryRecord]:
        """Finished MPS fault recoveries, oldest first."""
        return self.recoveries.recovered

    # events ----------------------------------------------------------------------------------------------
    def event(self, kind: EventKind, agent: str | None, message: str, gpu: str | None = None) -> Event:
        """Record an event (wall-clock time) in the store. An OOM event is also an out-of-memory sign: counted
        in the usage history, and kept for :meth:`take_ooms`."""
        if kind == EventKind.OOM and agent is not None:
            self._oom_signs.append(agent)
            if self.usage is not None:
                self.usage.note_oom(agent)
        return self.store.add_event(self.clock.wall(), kind, agent, message, gpu)

    def take_ooms(self) -> list[str]:
        """Agents that showed an out-of-memory sign since the last call (each once, in order)."""
        out = list(dict.fromkeys(self._oom_signs))
        self._oom_signs.clear()
        return out

    # membership ------------------------------------------------------------------------------------------
    def add(self, setup: AgentSetup, *, restarts: int = 0) -> Agent:
        """Add an agent (STOPPED) to supervision and record it."""
        name = setup.name

        def on_event(kind: EventKind, message: str) -> None:
            a = self.agents.get(name)
            self.event(kind, name, message, a.setup.launch.gpu if a else setup.launch.gpu)
            if kind in LOGGED_KINDS:
                with contextlib.suppress(OSError):
                    self.logs.mark(name, f"{kind.value}: {message}")  # so `colo logs` shows each life

        agent = Agent(
            setup,
            runner=self.runner,
            probe=self.probe,
            clock=self.clock,
            log_path=self.logs.path(name),
            on_event=on_event,
            on_change=self._save,
            restarts=restarts,
            pre_stop=self._terminate_client if self.mps is not None else None,
            launch_gate=self._launch_gate if self.mps is not None else None,
            ready_gate=self._ready_gate if self.mps is not None else None,
        )
        self.agents[name] = agent
        self._scanners[name] = LogScanner(self.logs.path(name), from_end=True)
        self._save(agent)
        return agent

    def _terminate_client(self, agent: Agent) -> None:
        uuid = agent.setup.launch.gpu_uuid
        rec = self.recoveries.get(uuid) if uuid else None
        if rec is not None and rec.trigger in _NO_SERVER_TO_ASK:
            return  # its server or daemon is gone (or hung): asking would only wait for a timeout
        if self.mps is not None and uuid and agent.handle is not None and agent.setup.launch.mps_client:
            self.mps.terminate_client(uuid, agent.handle.pid)

    def _launch_gate(self, agent: Agent) -> str | None:
        """Why ``agent`` must not start now: it is an MPS client and its GPU's daemon does not answer (it would
        run as a plain CUDA context, outside its limits). None: it may start."""
        uuid = agent.setup.launch.gpu_uuid
        if self.mps is None or not uuid or not agent.setup.launch.mps_client or self.mps.answering(uuid):
            return None
        return f"waiting for the MPS control daemon of {uuid} to answer (started now, it would run outside MPS)"

    def _ready_gate(self, agent: Agent) -> str | None:
        """Why a healthy ``agent`` must stay STARTING: it was found outside its plan and no GPU reading has
        listed this process as its plan says yet. None: it may be RUNNING."""
        planned = agent.setup.launch.mps_client
        if agent.name not in self._outside.suspects or agent.mps_client == planned:
            return None
        as_planned = "an MPS client" if planned else "time-sliced"
        return f"waiting for a GPU reading to list it as {as_planned} (it was found outside its plan)"

    def _save(self, agent: Agent) -> None:
        if agent.name in self.agents:
            self.store.save_agent(agent.record())

    def retire(self, name: str) -> None:
        """Stop an agent and forget it once it has stopped (removed from the plan)."""
        agent = self.agents[name]
        self._retiring.add(name)
        self._outside.forget(name)
        agent.hold = True
        agent.stop("removed from the plan")

    def agent(self, name: str) -> Agent:
        """The agent called ``name``. Raises KeyError."""
        return self.agents[name]

    def statuses(self) -> list[AgentStatus]:
        return [a.status() for a in self.agents.values()]

    # rolling changes -------------------------------------------------------------------------------------
    def roll(self, changes: Sequence[tuple[AgentSetup, str]]) -> None:
        """Restart these agents with their new setups one at a time (next one once the last is RUNNING)."""
        for setup, reason in changes:
            self._rolling.queue.append((setup.name, setup, reason))

    def settling_on(self, gpu_uuid: str) -> bool:
        """An agent on this GPU still waits for its rolling restart, is being restarted by one, or is being
        retired: a process started under the GPU's previous setup may still run there."""
        r = self._rolling
        pending = {name for name, _, _ in r.queue}
        if r.current is not None:
            pending.add(r.current)
        for name in pending:
            a = self.agents.get(name)
            if a is not None and a.setup.launch.gpu_uuid == gpu_uuid:
                return True
        for name in self._retiring:
            a = self.agents.get(name)
            if a is not None and a.setup.launch.gpu_uuid == gpu_uuid and a.handle is not None:
                return True
        return False

    def _tick_rolling(self, now: float) -> None:
        r = self._rolling
        if r.current is not None:
            agent = self.agents.get(r.current)
            settled = agent is None or agent.state in (
                AgentState.RUNNING,
                AgentState.FATAL,
                AgentState.EXITED,
            )
            if not settled and now < r.deadline:
                return
            r.current = None
        while r.queue:
            name, setup, reason = r.queue.popleft()
            agent = self.agents.get(name)
            if agent is None or name in self._retiring:
                continue
            agent.reconfigure(setup)
            agent.restart(reason)
            r.current = name
            health = setup.health
            r.deadline = now + setup.rules.stop_wait_secs + health.startup_timeout_secs + 5.0
            return

    # the loop --------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass: agents, logs, MPS faults, recoveries, rolling restarts, memory, log rotation."""
        now = self.clock.monotonic()
        if not self.shutting_down:
            self._tick_deaths(now)
        for agent in list(self.agents.values()):
            before = agent.handle
            self._scan_log(agent)
            try:
                agent.tick()
            except ColoError as exc:  # failures are data: never let one agent stop the loop
                agent.last_error = str(exc)
            if before is not None and agent.handle is not before:
                self._scan_log(agent, pid=before.pid)  # the last words of a process that just ended
                self._note_exit(agent, now)
        for name in list(self._retiring):
            gone = self.agents.get(name)
            if gone is None or (gone.handle is None and gone.state != AgentState.STOPPING):
                self._retiring.discard(name)
                self.agents.pop(name, None)
                self._scanners.pop(name, None)
                self.store.delete_agent(name)
        if not self.shutting_down:
            self._tick_mps(now)
            self._tick_membership(now)
            self.recoveries.tick(now, self.agents, self.agents_on)
            self._tick_rolling(now)
        if self.gpu_memory is not None and now >= self._next_memory_poll:
            self._next_memory_poll = now + MEMORY_POLL_SECS
            self._poll_memory()
        if self.usage is not None:
            self.usage.tick()
        if now >= self._next_rotate:
            self._next_rotate = now + ROTATE_CHECK_SECS
            for name in self.agents:
                self.logs.rotate_if_needed(name)

    def _scan_log(self, agent: Agent, pid: int | None = None) -> None:
        scanner = self._scanners.get(agent.name)
        if scanner is None:
            return
        text = scanner.read_new()
        if not text:
            return
        found = scan_text(text)
        if found.oom and agent.handle is not None:
            agent.note_oom(found.oom)
        elif found.oom and pid is not None:
            self.event(EventKind.OOM, agent.name, f"out of memory: {found.oom}", agent.setup.launch.gpu)
            agent.last_error = f"out of memory: {found.oom}"
            self._save(agent)
        uuid = agent.setup.launch.gpu_uuid
        rec = self.recoveries.get(uuid) if uuid else None
        if rec is not None and rec.culprit is None and found.fault_cause:
            rec.culprit = agent.name  # its log said so only after the server was seen in FAULT
            self.event(EventKind.MPS_FAULT, agent.name, f"faulting client on {uuid}: {agent.name}", uuid)
        stopping = agent.hold or agent.state == AgentState.STOPPING  # colo ended it: not a fault sign
        mps_client = agent.setup.launch.mps_client  # an agent on a GPU without MPS starts no MPS recovery
        if found.mps_error and self.mps is not None and uuid and mps_client and uuid not in self.recoveries and not stopping:
            culprit = agent.name if found.fault_cause else None
            detail, prior = self._suspects.get(uuid, (f"{agent.name}: {found.mps_error}", None))
            self._suspects[uuid] = (detail, prior or culprit)

    def _tick_deaths(self, now: float) -> None:
        """MPS processes that died (every tick: liveness only) start their GPU's recovery at once."""
        if self.mps is None:
            return
        try:
            deaths = self.mps.deaths()
        except ColoError as exc:
            self.event(EventKind.DAEMON, None, f"cannot watch the MPS processes: {exc}")
            return
        for fault in deaths:
            self._begin(fault, now)

    def _begin(self, fault: MpsFault, now: float, culprit: str | None = None) -> None:
        """Start ``fault``'s GPU recovery (or hand it to the one that runs there), unless a server died that
        no agent used."""
        uuid = fault.gpu_uuid
        if uuid in self.recoveries:
            self.recoveries.refault(fault, self.agents_on(uuid), self._retiring, now)
            return
        on_gpu = self.agents_on(uuid)
        in_use = any(a.handle is not None and a.state in _IN_USE and not a.hold for a in on_gpu)
        if fault.trigger == RecoveryTrigger.SERVER_DIED and not in_use:
            self.event(EventKind.DAEMON, None, f"{fault.detail} on {uuid}; no agent was using it", uuid)
            return
        if uuid in self.recoveries.given_up:
            why = "its recovery gave up; start an agent there to try again"
            self.event(EventKind.DAEMON, None, f"{fault.detail} on {uuid}: not recovered ({why})", uuid)
            return
        self.recoveries.begin(fault, culprit, on_gpu, self._retiring, now)

    def _note_exit(self, agent: Agent, now: float) -> None:
        """An agent that lost its CUDA context (exit code 4) while serving: its GPU's MPS is looked at. One
        relaunched by its GPU's recovery that loses it again: a failure during that recovery (its new server
        died before colo's reading listed it), so the recovery starts over."""
        uuid = agent.setup.launch.gpu_uuid
        status = agent.last_exit
        if status is None or status.code != EXIT_CONTEXT_LOST or self.mps is None or not uuid:
            return
        if not agent.setup.launch.mps_client:
            return  # its GPU runs without MPS: the agent's own loss, it restarts by its policy
        if agent.hold or self.shutting_down:
            return
        rec = self.recoveries.get(uuid)
        if rec is not None:
            if rec.phase == RecoveryPhase.RELAUNCHING:
                detail = f"{agent.name} lost its new CUDA context (exit code {EXIT_CONTEXT_LOST}) while relaunching"
                fault = MpsFault(uuid, detail, trigger=RecoveryTrigger.CLIENT_RPC_FAILURE)
                self.recoveries.refault(fault, self.agents_on(uuid), self._retiring, now)
            return
        self._lost.setdefault(uuid, (agent.name, now))

    def _tick_lost(self, now: float) -> None:
        """CLIENT_RPC_FAILURE: an agent lost its context and a fresh look says the GPU's MPS is unhealthy;
        a healthy MPS means the loss was the agent's own (a sticky error): only it restarts."""
        assert self.mps is not None
        for uuid, (name, at) in list(self._lost.items()):
            del self._lost[uuid]
            if uuid in self.recoveries:
                continue
            if self.mps.healthy(uuid):
                suspect = self._suspects.get(uuid)
                if suspect is not None and suspect[0].startswith(f"{name}: "):
                    del self._suspects[uuid]  # its own last words: the fresh look at the GPU decides
                self.event(
                    EventKind.UNHEALTHY,
                    name,
                    f"{name} lost its CUDA context (exit code {EXIT_CONTEXT_LOST}); the MPS of {uuid} is healthy:"
                    " only this agent restarts",
                    uuid,
                )
                continue
            detail = f"{name} lost its CUDA context (exit code {EXIT_CONTEXT_LOST}) and the GPU's MPS is not healthy"
            fault = MpsFault(uuid, detail, trigger=RecoveryTrigger.CLIENT_RPC_FAILURE, seen_ok_at=at)
            self._begin(fault, now)

    def _tick_given_up(self, now: float) -> None:
        """A GPU whose recovery gave up, once an agent there is asked to run again (a start by hand, an
        apply): its recovery begins again when its daemon does not answer (the agent waits in BACKOFF at the
        launch gate meanwhile), else the GPU is an ordinary one again."""
        assert self.mps is not None
        for uuid in list(self.recoveries.given_up):
            wanted = [a.name for a in self.agents_on(uuid) if a.state in (*_IN_USE, AgentState.BACKOFF) and not a.hold]
            if not wanted:
                continue
            trigger = self.recoveries.given_up.pop(uuid)
            if not self.mps.answering(uuid):
                detail = f"{', '.join(wanted)} asked to run after its recovery gave up; its daemon does not answer"
                self._begin(MpsFault(uuid, detail, trigger=trigger), now)

    def _tick_mps(self, now: float) -> None:
        if self.mps is None:
            return
        self._tick_given_up(now)
        self._tick_lost(now)
        faults: list[MpsFault] = []
        if now >= self._next_mps_poll:
            self._next_mps_poll = now + MPS_POLL_SECS
            try:
                faults = self.mps.faults()
            except ColoError as exc:
                self.event(EventKind.DAEMON, None, f"cannot read MPS status: {exc}")
        for fault in faults:
            if fault.gpu_uuid in self.recoveries:
                self.recoveries.refault(fault, self.agents_on(fault.gpu_uuid), self._retiring, now)
                continue
            culprit = self._agent_of_pid(fault.client_pid)
            suspect = self._suspects.pop(fault.gpu_uuid, None)
            if culprit is None and suspect is not None:
                culprit = suspect[1]
            self._begin(fault, now, culprit)
        if now >= self._next_client_check:
            self._next_client_check = now + CLIENT_CHECK_SECS
            self._compare_clients()
        for uuid, (detail, culprit) in list(self._suspects.items()):
            # Clients died with MPS errors even if the server was not seen in FAULT.
            del self._suspects[uuid]  # CLIENT_MPS_ERROR
            if uuid not in self.recoveries:
                fault = MpsFault(uuid, detail, trigger=RecoveryTrigger.CLIENT_MPS_ERROR)
                self.recoveries.begin(fault, culprit, self.agents_on(uuid), self._retiring, now)

    def _tick_membership(self, now: float) -> None:
        """At each new GPU reading: every agent with a process against its plan (an MPS client or not). Its
        ``mps_client`` is set from the reading; one that differed on two readings in a row gets an
        ``mps_fault`` event naming it and what differs, and leaves RUNNING: an MPS client is recovered with its
        GPU (``not_as_planned``: the daemon restored first when it does not answer, then the agent relaunched),
        a time-sliced one is restarted."""
        if self.mps is None:
            return
        try:
            listed = self.mps.gpu_processes()
        except ColoError:
            return
        if listed is None:
            return
        off_plan: dict[str, list[str]] = {}
        given_up: dict[str, str] = {}
        for agent in self.agents.values():
            uuid = agent.setup.launch.gpu_uuid
            if agent.handle is None or agent.hold or agent.state not in _IN_USE:
                self._membership.forget(agent.name)
                continue
            pids = [agent.handle.pid, *procs.descendants(agent.handle.pid)]
            m = judge(agent.name, uuid, agent.setup.launch.mps_client, pids, listed)
            if m.mps_client != agent.mps_client:
                agent.mps_client = m.mps_client
                self._save(agent)
            if m.mps_client is not None and not m.differs:
                self._outside.confirmed(agent.name)
            if not self._membership.note(m):
                continue
            self.event(EventKind.MPS_FAULT, agent.name, f"not as planned: {m.detail()}", uuid)
            found = self._outside.note(agent.name, Finding(now, agent.handle.pid, m.short()))
            verdict = outside_plan_verdict(m, found, pipe_dir_of(agent.setup.launch.env_dict())) if found else None
            if m.planned_mps and uuid:
                off_plan.setdefault(uuid, []).append(agent.name)
                if verdict is not None:
                    given_up[agent.name] = verdict  # stopped by its recovery, then FATAL instead of relaunched
            elif verdict is not None:
                self.event(EventKind.FATAL, agent.name, verdict, uuid)
                agent.give_up(verdict)
            else:
                agent.restart("not as planned: an MPS client, planned time-sliced")
        for uuid, names in off_plan.items():
            detail = f"{', '.join(names)} not an MPS client as planned"
            fault = MpsFault(uuid, detail, trigger=RecoveryTrigger.NOT_AS_PLANNED)
            if uuid in self.recoveries:
                self.recoveries.refault(fault, self.agents_on(uuid), self._retiring, now, only=names)
            else:
                self.recoveries.begin(fault, None, self.agents_on(uuid), self._retiring, now, only=names)
            for name in names:
                if name in given_up:
                    self.event(EventKind.FATAL, name, given_up[name], uuid)
                    self.recoveries.abandon(uuid, name, given_up[name])

    def _compare_clients(self) -> None:
        """Each GPU's MPS client list against the agents colo placed there: an event (once per pid) for an agent
        RUNNING on two checks in a row without being a client (it bypasses MPS and its limits, or never touched
        CUDA), and for a client that is no agent of colo. When no agent pid is listed at all while clients are,
        the pids are another PID namespace's: nothing is compared (one event)."""
        assert self.mps is not None
        try:
            listed = self.mps.clients()
        except ColoError:
            return
        for uuid, clients in listed.items():
            running = {a.handle.pid: a for a in self.agents_on(uuid) if a.handle and a.state == AgentState.RUNNING}
            if clients and running and not clients & set(running):
                if uuid not in self._told_namespace:
                    self._told_namespace.add(uuid)
                    self.event(
                        EventKind.DAEMON,
                        None,
                        f"the MPS clients of {uuid} are not colo's pids (another PID namespace?): not compared",
                        uuid,
                    )
                continue
            for pid, agent in running.items():
                if pid in clients:
                    self._client_misses.pop(pid, None)
                    continue
                self._client_misses[pid] = self._client_misses.get(pid, 0) + 1
                if self._client_misses[pid] == 2:
                    self.event(
                        EventKind.DAEMON,
                        agent.name,
                        f"{agent.name} (pid {pid}) is RUNNING but not a client of the MPS server of {uuid}: its CUDA"
                        " work (if any) bypasses MPS and its limits",
                        uuid,
                    )
            ours = {a.handle.pid for a in self.agents.values() if a.handle is not None}
            for pid in sorted(clients - ours - self._told_foreign):
                self._told_foreign.add(pid)
                self.event(EventKind.DAEMON, None, f"MPS client {pid} on {uuid} is not an agent of colo", uuid)

    def _agent_of_pid(self, pid: int | None) -> str | None:
        if pid is None:
            return None
        for agent in self.agents.values():
            if agent.handle is not None and agent.handle.pid == pid:
                return agent.name
        return None

    def agents_on(self, gpu_uuid: str) -> list[Agent]:
        """The agents placed on this GPU."""
        return [a for a in self.agents.values() if a.setup.launch.gpu_uuid == gpu_uuid]

    def _poll_memory(self) -> None:
        assert self.gpu_memory is not None
        pids = [a.handle.pid for a in self.agents.values() if a.handle is not None]
        if not pids:
            return
        try:
            used = self.gpu_memory(pids)
        except ColoError:
            return
        for agent in self.agents.values():
            if agent.handle is not None:
                before = agent.memory_used_bytes
                agent.note_memory(used.get(agent.handle.pid))
                if self.usage is not None and agent.state == AgentState.RUNNING:
                    limit, gpu = agent.setup.limit_bytes, agent.setup.launch.gpu
                    self.usage.note(
                        agent.name, agent.memory_used_bytes, limit, gpu, agent.shapes, agent.requests_answered
                    )
                if agent.memory_used_bytes != before:
                    self._save(agent)

    # shutting down ---------------------------------------------------------------------------------------
    def stop_all(self) -> None:
        """Ask every agent to stop (lowest priority first; MPS ``terminate_client`` before the signal)."""
        self.shutting_down = True  # no fault recovery or rolling restart may start anything now
        for agent in reversed(list(self.agents.values())):
            agent.hold = True
            agent.stop("colo down")

    def all_down(self) -> bool:
        """True when no agent has a process."""
        return all(a.handle is None for a in self.agents.values())
