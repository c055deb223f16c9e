"""The running system: plan against the GPUs, start the per-GPU MPS daemons, launch and supervise agents.

``colo up`` builds an :class:`Orchestrator`, calls :meth:`Orchestrator.up`, then :meth:`Orchestrator.run`
until told to stop; the API (``colo.api.app.create_app(orchestrator, ...)``) reads its published
:meth:`Orchestrator.snapshot` and calls its actions and :meth:`Orchestrator.apply`. Actions, applies and ticks
are guarded by one lock, so the API thread and the supervision loop never interleave.

State lives in ``<state_dir>``: ``colo.db`` (the :class:`~colo.supervise.store.Store`: agents, events),
``logs/<agent>.log``, ``mps/<uuid>/{pipe,log}``, ``config.yaml`` (the configuration the built-in agents
read), ``colo.pid`` and ``colo.lock`` (one orchestrator per state dir).

The orchestrator starts, ticks, applies and stops; the rooms it calls: :mod:`colo.supervise.lockfile` (the
state dir's lock and pid file), :mod:`colo.supervise.fleet` (the per-GPU MPS daemons),
:mod:`colo.supervise.adoption` (agents that outlived an orchestrator), :mod:`colo.supervise.supervisor` (the
loop over agents) with :mod:`colo.supervise.recovery.mps_recovery` (MPS fault recovery), and
:mod:`colo.supervise.publish` (the one GPU reading and the snapshot the API serves). The CLI reaches a
running orchestrator through its HTTP API only (``colo.api``), ``colo down`` through a signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from colo import units
from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError, DoesNotFitError, GpuError, PlanError, SupervisorError
from colo.files import write_atomic
from colo.gpu import procs
from colo.gpu.mps.control import MpsControl
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend
from colo.gpu.poller import GpuPoller
from colo.launch.fork_runner import make_runner
from colo.launch.health import HealthChecker, Probe
from colo.launch.runner import Runner
from colo.plan.types import AgentPlan, GpuSlot, MemoryInputs, ModelMemory, Plan, Unplaced
from colo.spec.config import ColoConfig, MpsMode
from colo.supervise import planning
from colo.supervise.adoption import take_over
from colo.supervise.agent import AgentSetup
from colo.supervise.agent_setup import describe_change
from colo.supervise.fleet import MPS_COMMAND_TIMEOUT_SECS, make_fleet, start_fleet, stop_fleet
from colo.supervise.lockfile import StateLock
from colo.supervise.logs import AgentLogs
from colo.supervise.mps_switch import MpsSwitch, mps_events, mps_labels
from colo.supervise.publish import Publisher
from colo.supervise.recovery.mps_hooks import FleetHooks
from colo.supervise.recovery.mps_recovery import RecoveryRecord
from colo.supervise.snapshots import AgentStatus, ApplyResult, Event, EventKind, SystemSnapshot
from colo.supervise.state import AgentState
from colo.supervise.statedir import StateDirPaths, config_yaml, resolve_state_dir
from colo.supervise.store import Store
from colo.supervise.supervisor import Supervisor
from colo.supervise.tune import formula, limits_file
from colo.supervise.tune.history import UsageRecorder

TICK_SECS = 0.5


@dataclass(frozen=True)
class UpResult:
    """What ``up`` did: agents started and adopted, agents left out (with reasons), MPS daemons started."""

    started: list[str]
    adopted: list[str]
    left_out: list[Unplaced]
    daemons_started: list[str]
    daemons_adopted: list[str]
    mps: bool
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "adopted": self.adopted,
            "left_out": [{"agent": u.agent, "priority": u.priority, "reason": u.reason} for u in self.left_out],
            "daemons_started": self.daemons_started,
            "daemons_adopted": self.daemons_adopted,
            "mps": self.mps,
            "warnings": self.warnings,
        }


class Orchestrator:
    """The running colo system on this node.

    Injected for tests: ``gpu_backend`` (else NVML when available), ``mps_control`` (else the real
    ``nvidia-cuda-mps-control``), ``runner``, ``probe``, ``clock``. ``use_mps=False`` is plain time-slicing
    under the same supervision (``policy.mps: off`` for the run); ``mps_mode`` replaces ``policy.mps`` for the
    run (``colo up --mps``). ``node`` picks which node of an inventory this machine is.
    ``run_agents=False``: the agents run elsewhere (Kubernetes pods, systemd units; ``colo node --no-agents``):
    plan, start/adopt this node's MPS daemons and serve the API, but launch no agent.

    Raises from :meth:`up`: ConfigError/PlanError for a bad or unplannable configuration, GpuError/MpsError
    when the GPUs or MPS cannot be used, SupervisorError when another orchestrator holds the state dir.
    """

    def __init__(
        self,
        config: ColoConfig,
        *,
        config_path: str | Path | None = None,
        state_dir: str | Path | None = None,
        use_mps: bool = True,
        node: str | None = None,
        run_agents: bool = True,
        gpu_backend: GpuBackend | None = None,
        mps_control: MpsControl | None = None,
        runner: Runner | None = None,
        probe: Probe | None = None,
        clock: Clock = SYSTEM_CLOCK,
        fault_wait_secs: float = 30.0,
        memory: Mapping[str, ModelMemory] | None = None,
        mps_mode: MpsMode | None = None,
    ) -> None:
        self._config = config
        self.config_path = Path(config_path).resolve() if config_path else None
        self.paths = StateDirPaths(resolve_state_dir(config, state_dir))
        self.want_mps = use_mps
        # `colo up --mps`: policy.mps for this run, whatever the file says. Without agents here (pods, units:
        # `colo render` writes them as MPS clients) every GPU they run on needs its daemon: on.
        self.mps_mode: MpsMode | None = mps_mode if mps_mode is not None or run_agents else "on"
        self.node = node
        self.run_agents = run_agents
        self._backend = gpu_backend
        self._backend_given = gpu_backend is not None
        self._mps_control = mps_control
        self.runner: Runner = runner or make_runner(config.policy.launcher)
        self.probe: Probe = probe or HealthChecker()
        self.clock: Clock = clock
        self.fault_wait_secs = fault_wait_secs
        self._memory_override = memory
        self._lock = threading.RLock()
        self._lock_file = StateLock(self.paths)
        self._plan: Plan | None = None
        self._fleet: MpsFleet | None = None
        self._woke: set[int] = set()  # pids that woke the run loop (see _wait_for_next_tick)
        self._mps_switch: MpsSwitch | None = None  # the fleet following the plan's MPS decisions
        self.store = Store(self.paths.db)
        self.logs = AgentLogs(self.paths.logs)
        self.supervisor: Supervisor | None = None
        self.warnings: list[str] = []
        self._stopping = False
        self._subreaper = False
        self._published = Publisher(None, self.clock)
        pol = config.policy
        self.usage = UsageRecorder(
            self.store,
            self.clock,
            window_secs=pol.history_window_secs,
            retention_secs=pol.history_retention_secs,
            max_rows=pol.history_max_rows,
        )

    # --- the API's surface ---------------------------------------------------------------------------

    def config(self) -> ColoConfig:
        """The configuration now in force."""
        return self._config

    def current_plan(self) -> Plan:
        """The plan now in force. Raises SupervisorError before :meth:`up`."""
        if self._plan is None:
            raise SupervisorError("colo is not up yet: no plan in force")
        return self._plan

    def snapshot(self) -> SystemSnapshot:
        """The system as last published (once per GPU poll, and after every action and apply): the API
        reads this, never the GPUs. Never waits for the supervision loop. Raises SupervisorError before
        :meth:`up`."""
        snap = self._published.latest()
        if snap is None:
            raise SupervisorError("colo is not up yet: nothing published")
        return snap

    def _publish(self) -> None:
        """Freeze the agents, the plan, the last GPU reading and the finished MPS recoveries into the snapshot
        (under the lock)."""
        done = tuple(r.summary() for r in self.supervisor.recovered) if self.supervisor is not None else ()
        usage = tuple(self.usage.last[n] for n in sorted(self.usage.last))
        self._published.publish(self._config, self._plan, self.statuses(), done, usage, self.usage.rows)

    def statuses(self) -> list[AgentStatus]:
        """Every agent of the plan: supervised ones, then those left out (STOPPED, reason in last_error)."""
        with self._lock:
            out = self._sup().statuses()
            have = {s.name for s in out}
            for u in self._plan.unplaced if self._plan else ():
                if u.agent not in have:
                    out.append(self._left_out_status(u))
            return out

    def status(self, name: str) -> AgentStatus:
        """One agent's status. Raises KeyError for an agent not in the configuration."""
        with self._lock:
            sup = self._sup()
            if name in sup.agents:
                return sup.agents[name].status()
            for u in self._plan.unplaced if self._plan else ():
                if u.agent == name:
                    return self._left_out_status(u)
            raise KeyError(name)

    def _left_out_status(self, u: Unplaced) -> AgentStatus:
        models = tuple(self._config.agents[u.agent].models) if u.agent in self._config.agents else ()
        return AgentStatus(
            name=u.agent,
            state=AgentState.STOPPED,
            pid=None,
            gpu=None,
            gpu_uuid=None,
            limit_bytes=u.limit_bytes,
            requirement_bytes=0,
            priority=u.priority,
            restarts=0,
            last_error=f"left out: {u.reason}",
            models=models,
        )

    def _agent_for_action(self, name: str) -> Any:
        sup = self._sup()
        if name in sup.agents:
            return sup.agents[name]
        for u in self._plan.unplaced if self._plan else ():
            if u.agent == name:
                raise PlanError(f"agent {name!r} is not placed on any GPU of this node: {u.reason}")
        raise KeyError(name)

    def start(self, name: str) -> AgentStatus:
        """Start an agent (also from FATAL/EXITED). Raises KeyError, PlanError (left out)."""
        with self._lock:
            agent = self._agent_for_action(name)
            agent.hold = False
            agent.start("start requested")
            self._publish()
            return self.status(name)

    def stop(self, name: str) -> AgentStatus:
        """Stop an agent (stays STOPPED until started). Raises KeyError, PlanError (left out)."""
        with self._lock:
            agent = self._agent_for_action(name)
            agent.stop("stop requested")
            self._publish()
            return self.status(name)

    def restart(self, name: str) -> AgentStatus:
        """Restart an agent. Raises KeyError, PlanError (left out)."""
        with self._lock:
            agent = self._agent_for_action(name)
            agent.hold = False
            agent.restart("restart requested")
            self._publish()
            return self.status(name)

    def events(self, since_seq: int = 0, limit: int = 200, *, tail: bool = False) -> list[Event]:
        """Events after ``since_seq`` (oldest first): the first ``limit``, or with ``tail`` the newest ``limit``."""
        return self.store.events(since_seq, limit, tail=tail)

    def recoveries(self) -> list[RecoveryRecord]:
        """Finished MPS fault recoveries (with their durations in seconds)."""
        with self._lock:
            return list(self._sup().recovered)

    def _sup(self) -> Supervisor:
        if self.supervisor is None:
            raise SupervisorError("colo is not up yet")
        return self.supervisor

    # --- planning ------------------------------------------------------------------------------------

    def _backend_or_none(self) -> GpuBackend | None:
        if self._backend is None and not self._backend_given:
            try:
                from colo.gpu.nvml import NvmlBackend

                backend = NvmlBackend()
                backend.gpus()
                self._backend = backend
            except (GpuError, ImportError) as exc:
                self._backend_given = True  # do not try again
                if self._config.gpus == "auto":
                    raise PlanError(
                        f"gpus: auto, but the GPUs cannot be read ({exc})",
                        hint="run where the NVIDIA driver is loaded, or list an inventory under 'gpus:'",
                    ) from exc
        return self._backend

    def local_node(self, config: ColoConfig) -> str:
        """The node this orchestrator runs (``--node``, the inventory's only node, or ``local``)."""
        return planning.local_node(config, self.node)

    def _slots(self, config: ColoConfig) -> tuple[list[GpuSlot], list[str]]:
        backend = self._backend_or_none()
        gpus = backend.gpus() if backend is not None else None
        return planning.gpu_slots(config, gpus, self.local_node(config))

    def _memory(
        self, config: ColoConfig, slots: Sequence[GpuSlot]
    ) -> Mapping[str, ModelMemory] | MemoryInputs | None:
        """Model memory for the planner: measured/estimated from the model DB when ``policy.memory_source:
        db`` (for this machine's GPU model), else None (the models' declared ``memory``)."""
        if self._memory_override is not None:
            return self._memory_override
        return planning.memory_inputs(config, slots, state_dir=self.paths.root)

    def make_plan(self, config: ColoConfig) -> tuple[Plan, list[str]]:
        """Plan ``config`` on this machine's GPUs (the steps of :func:`colo.supervise.planning.plan_node`).

        Raises ConfigError, PlanError, GpuError.
        """
        if self.mps_mode is not None:
            config = config.model_copy(update={"policy": config.policy.model_copy(update={"mps": self.mps_mode})})
        slots, warnings = self._slots(config)
        planned = planning.plan_slots(
            config, slots, node=self.local_node(config), memory=self._memory(config, slots), warnings=warnings,
            mps_off=None if self.want_mps else "--no-mps",
        )
        return planned.plan, list(planned.warnings)

    def _local_placed(self, p: Plan, config: ColoConfig) -> tuple[list[AgentPlan], list[Unplaced]]:
        return planning.split_local(p, self.local_node(config), have_uuids=self._backend is not None)

    # --- launch specs --------------------------------------------------------------------------------

    def setup_for(self, config: ColoConfig, ap: AgentPlan) -> AgentSetup:
        """How ``ap`` is launched here (see :func:`colo.supervise.planning.launch_setup`)."""
        root = self._fleet.root if self._fleet is not None else None
        return planning.launch_setup(config, ap, config_copy=self.paths.config_copy, mps_root=root)

    # --- up / run / down -----------------------------------------------------------------------------

    def write_pid_file(self, pid: int | None = None) -> None:
        """Record the orchestrator's pid (``colo down`` signals it)."""
        self._lock_file.write_pid(pid)

    def _release(self) -> None:
        self._lock_file.release()

    def up(self) -> UpResult:
        """Plan, start the MPS daemons, re-adopt live agents from the store, launch the rest by priority.

        Raises ConfigError, PlanError, GpuError, MpsError, SupervisorError (nothing is left running then).
        """
        with self._lock:
            self._lock_file.acquire()
            try:
                return self._up()
            except BaseException:
                if self._fleet is not None:
                    with contextlib.suppress(ColoError):
                        self._stop_daemons()
                self._lock_file.release()
                raise

    def _up(self) -> UpResult:
        config = self._config
        p, warnings = self.make_plan(config)
        self.warnings.extend(warnings)
        mine, left_out = self._local_placed(p, config)
        node = self.local_node(config)
        elsewhere = [ap.name for ap in p.placed if ap.gpu is not None and ap.gpu.node != node]
        if elsewhere:
            self.warnings.append(f"placed on other nodes (not run here, node {node!r}): {', '.join(elsewhere)}")
        on_gpus = sorted({ap.gpu.uuid for ap in mine if ap.gpu is not None and ap.gpu.uuid})
        uuids = planning.mps_gpu_uuids(p, mine)  # the GPUs the plan runs MPS on (policy.mps)
        started_d: list[str] = []
        adopted_d: list[str] = []
        if self.want_mps and on_gpus:
            # The fleet exists even when no GPU runs MPS yet: an apply that places a second agent on a GPU
            # (policy.mps: auto) takes that GPU into it.
            self._fleet = make_fleet(self.paths.root, uuids, self._mps_control)
            if uuids:
                self._become_subreaper()
                started_d, adopted_d = start_fleet(self._fleet, self.store)
            self._mps_switch = MpsSwitch(
                self._fleet, self.store, hooks=self._hooks, become_subreaper=self._become_subreaper, reap=self._reap
            )
            self._mps_switch.keep_leftovers(uuids, on_gpus)
        elif self.want_mps:
            self.warnings.append("MPS not started: no agent is placed on a GPU with a UUID on this machine")
        self._plan = p
        self._write_config_copy(config)
        reading = None  # without NVML there is no GPU reading: FAULT is asked of the daemons, no memory
        if self._backend is not None:
            root = self._fleet.root if self._fleet is not None else MpsRoot.under_state_dir(self.paths.root)
            control = self._fleet.control if self._fleet is not None else None
            poller = GpuPoller(self._backend, root, control, command_timeout_secs=MPS_COMMAND_TIMEOUT_SECS)
            self._published = Publisher(poller, self.clock)
            reading = self._published.reading
        sup = Supervisor(
            runner=self.runner,
            probe=self.probe,
            clock=self.clock,
            store=self.store,
            logs=self.logs,
            mps=FleetHooks(self._fleet, reading, clock=self.clock) if self._fleet is not None else None,
            gpu_memory=self._published.tree_memory if reading is not None else None,
            fault_wait_secs=self.fault_wait_secs,
            usage=self.usage,
        )
        self.usage.rows = self.store.usage_rows()
        self.supervisor = sup
        for uuid in started_d:
            sup.event(EventKind.DAEMON, None, f"started the MPS daemon of {uuid}", uuid)
        for uuid in adopted_d:
            sup.event(EventKind.DAEMON, None, f"adopted the running MPS daemon of {uuid}", uuid)
        mps_events(sup.event, p, mine)
        labels = mps_labels(p, mine) if self._fleet is not None else []
        records = self.store.agents()
        self.write_pid_file()
        self.store.delete_meta("api_url")  # the CLI records it again once its API serves
        if not self.run_agents:
            mine = []  # agents run as pods/units: this node only keeps their daemons (started above)
        done = take_over(sup, self.runner, records, [self.setup_for(config, ap) for ap in mine])
        started, adopted, roll = done.started, done.adopted, done.roll
        sup.roll(roll)
        for u in left_out:
            sup.event(EventKind.STOPPED, u.agent, f"left out ({u.priority}): {u.reason}")
        self._record_left_out(left_out)
        self.store.set_meta(
            "orchestrator",
            {
                "pid": os.getpid(),
                "state_dir": str(self.paths.root),
                "config_path": str(self.config_path) if self.config_path else None,
                "mps": bool(uuids),
                "mps_gpus": labels,
                "api": {"host": config.api.host, "port": config.api.port},
            },
        )
        self._published.poll(force=True)
        self._publish()
        return UpResult(started, adopted, left_out, started_d, adopted_d, bool(uuids), self.warnings)

    def _become_subreaper(self) -> None:
        if self._mps_control is None and not self._subreaper:
            # The real `-d` forks the daemon and its launcher exits: as a subreaper, colo inherits the
            # daemon (and a killed daemon's server) and reaps them; a container's PID 1 may not.
            self._subreaper = procs.become_subreaper()

    def _record_mps(self, p: Plan, mine: Sequence[AgentPlan]) -> None:
        meta = self.store.get_meta("orchestrator", None)
        if isinstance(meta, dict):
            labels = mps_labels(p, mine) if self._fleet is not None else []
            self.store.set_meta("orchestrator", {**meta, "mps": bool(labels), "mps_gpus": labels})

    def _hooks(self) -> FleetHooks | None:
        mps = self.supervisor.mps if self.supervisor is not None else None
        return mps if isinstance(mps, FleetHooks) else None

    def _record_left_out(self, left_out: Sequence[Unplaced]) -> None:
        """Keep the agents this node does not run in the store, so `colo status` reports them too."""
        self.store.set_meta(
            "left_out",
            [
                {"agent": u.agent, "priority": u.priority, "limit_bytes": u.limit_bytes, "reason": u.reason}
                for u in left_out
            ],
        )

    def _write_config_copy(self, config: ColoConfig) -> None:
        if any(a.command is None for a in config.agents.values()):
            write_atomic(self.paths.config_copy, config_yaml(config, self.config_path))

    def tick(self) -> None:
        """One supervision pass: read the GPUs (when due), every agent, MPS and rolling restarts; then publish
        the snapshot."""
        with self._lock:
            self._reap()
            self._published.poll()
            self._sup().tick()
            if self._mps_switch is not None and self._mps_switch.retiring:
                self._mps_switch.tick(self._sup().settling_on, self._sup().event)
            for name in self._sup().take_ooms():
                self._roll_back(name)
            self._publish()

    def _roll_back(self, name: str) -> None:
        """``name`` ran out of memory: when its limit is a tuned one, restore the limit it had before (its
        tuned entry is marked rolled back, so later plans use that limit too) and restart it alone."""
        sup = self._sup()
        agent = sup.agents.get(name)
        if self._plan is None or agent is None or self.supervisor is None:
            return
        try:
            ap = self._plan.agent(name)
            entry = limits_file.load(self.paths.tuned_limits).get(name)
        except (KeyError, ColoError):
            return
        previous = entry.previous_limit_bytes if entry is not None else None
        rolled = entry is not None and entry.rolled_back_at is not None
        restore = formula.rollback_limit(ap.limit_source, agent.setup.limit_bytes, previous, rolled)
        if restore is None:
            return
        with contextlib.suppress(ColoError):
            limits_file.mark_rolled_back(self.paths.tuned_limits, name, self.clock.wall())
        back = replace(
            ap,
            limit_bytes=restore,
            margin_bytes=restore - ap.requirement_bytes,
            limit_source="rolled back",
        )
        self._plan = replace(self._plan, agents=tuple(back if a.name == name else a for a in self._plan.agents))
        sup.roll([(self.setup_for(self._config, back), "out of memory under its tuned limit: old limit restored")])
        sup.event(
            EventKind.ROLLED_BACK,
            name,
            f"out of memory under its tuned limit {units.format_size(agent.setup.limit_bytes)}: restored its limit"
            f" of {units.format_size(restore)} (only {name} restarts)",
            agent.setup.launch.gpu,
        )

    def _reap(self) -> None:
        """Collect MPS processes that ended as our children (see ``colo.gpu.mps.control``): no zombies."""
        if self._fleet is not None and self._fleet.control is not None:
            self._fleet.control.reap()

    def run(
        self, stop: threading.Event, *, tick_secs: float = TICK_SECS, reload: threading.Event | None = None
    ) -> None:
        """Supervise until ``stop`` is set (then :meth:`down`). ``reload`` set = re-apply the config file."""
        try:
            while not stop.is_set():
                if reload is not None and reload.is_set():
                    reload.clear()
                    self.reload()
                try:
                    self.tick()
                except Exception as exc:  # failures are data: one bad tick must not end supervision
                    with contextlib.suppress(Exception):
                        self._sup().event(EventKind.UNHEALTHY, None, f"supervision error: {type(exc).__name__}: {exc}")
                self._wait_for_next_tick(stop, tick_secs)
        finally:
            self.down()

    def _wait_for_next_tick(self, stop: threading.Event, tick_secs: float) -> None:
        """Wait ``tick_secs`` — or less: an agent or a watched MPS process (daemon, server) that exits wakes the
        loop at once (pidfds), so a death is acted on in milliseconds, not at the next tick. A pid that woke
        the loop does not wake it again (a zombie stays "exited" until reaped)."""
        with self._lock:
            pids = {a.handle.pid for a in self._sup().agents.values() if a.handle is not None}
            hooks = self._hooks()
            if hooks is not None:
                pids.update(hooks.watched_pids())
        self._woke &= pids
        self._woke.update(procs.wait_any_exit(pids - self._woke, tick_secs, stop))

    def reload(self) -> ApplyResult | None:
        """SIGHUP: load the config file again and apply it; an error is recorded as an event, not raised."""
        if self.config_path is None:
            return None
        from colo.spec import load_config

        try:
            return self.apply(load_config(self.config_path))
        except ColoError as exc:
            self._sup().event(EventKind.APPLIED, None, f"reload of {self.config_path} refused, nothing changed: {exc}")
            return None

    def down(self, *, timeout_secs: float | None = None) -> None:
        """Stop every agent (MPS ``terminate_client``, stop signal, SIGKILL after stop_wait), quit the MPS
        daemons colo started, release the state dir. Safe to call twice. Waits on the orchestrator's clock."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            sup = self.supervisor
        if sup is not None:
            with self._lock:
                sup.stop_all()
            limit = timeout_secs
            if limit is None:
                limit = max((a.setup.rules.stop_wait_secs for a in sup.agents.values()), default=0.0) + 5.0
            deadline = self.clock.monotonic() + limit
            while True:
                with self._lock:
                    sup.tick()
                    if sup.all_down():
                        break
                if self.clock.monotonic() >= deadline:
                    break
                self.clock.sleep(0.1)
            left = [a for a in sup.agents.values() if a.handle is not None]
            if left:  # past every stop_wait: make sure nothing of ours outlives `down`
                for a in left:
                    if a.handle is not None:
                        self.runner.signal(a.handle, int(signal.SIGKILL))
                for _ in range(50):
                    with self._lock:
                        sup.tick()
                        if sup.all_down():
                            break
                    self.clock.sleep(0.1)
            names = ", ".join(a.name for a in left)
            sup.event(EventKind.STOPPED, None, "colo down: agents stopped" + (f" (SIGKILL: {names})" if left else ""))
        with self._lock:
            try:
                self._stop_daemons()
            finally:
                with contextlib.suppress(ColoError):
                    self.store.delete_meta("orchestrator")
                self.runner.close()  # the pre-imported launcher, if any
                self._lock_file.remove_pid()
                self._lock_file.release()

    def _stop_daemons(self) -> None:
        if self._fleet is None:
            return
        sup = self.supervisor

        def stopped(uuid: str) -> None:
            if sup is not None:
                sup.event(EventKind.DAEMON, None, f"stopped the MPS daemon of {uuid}", uuid)

        try:
            stop_fleet(self._fleet, self.store, stopped)
        finally:
            self._reap()  # the daemons (and servers) that just exited as our children
            if self._subreaper:
                self._subreaper = not procs.become_subreaper(False)

    # --- apply ---------------------------------------------------------------------------------------

    def apply(self, config: ColoConfig, config_path: str | Path | None = None) -> ApplyResult:
        """Plan ``config`` and move to it: start new agents, stop removed ones, restart (one at a time) only
        those whose limit, placement, command or env changed. ``config_path``: the file it came from, which
        a later reload (SIGHUP) reads again.

        Raises DoesNotFitError when an agent above ``low`` priority would be left out, PlanError/ConfigError
        when it cannot be planned, PlanError when it needs a GPU without a running MPS daemon — nothing is
        changed then.
        """
        with self._lock:
            sup = self._sup()
            p, warnings = self.make_plan(config)
            mine, left_out = self._local_placed(p, config)
            refused = [u for u in left_out if u.priority != "low"]
            if refused:
                raise DoesNotFitError(
                    "the new configuration does not fit, nothing was changed: "
                    + "; ".join(f"{u.agent} ({u.priority}): {u.reason}" for u in refused),
                    agents=tuple(u.agent for u in refused),
                    hint="lower limits or margins, remove agents, or add GPUs",
                )
            if self.want_mps and self._fleet is None and planning.mps_gpu_uuids(p, mine):
                raise PlanError(
                    "the new plan runs MPS on a GPU, and this colo started without GPUs it could run MPS on",
                    hint="run `colo down` and `colo up`",
                )
            before = self._plan
            if self._mps_switch is not None:  # daemons first: the agents switching to MPS restart as their clients
                self._mps_switch.switch(p, mine, sup.event)
            placed_here = list(mine)
            if not self.run_agents:
                mine = []  # agents run as pods/units (see __init__)
            new = {ap.name: self.setup_for(config, ap) for ap in mine}
            result = ApplyResult()
            roll: list[tuple[AgentSetup, str]] = []
            for name in list(sup.agents):
                if name not in new:
                    sup.retire(name)
                    result.stopped.append(name)
            for ap in mine:
                setup = new[ap.name]
                agent = sup.agents.get(ap.name)
                if agent is None:
                    sup.add(setup).start("added by apply")
                    result.started.append(ap.name)
                elif agent.setup.needs_restart_for(setup):
                    roll.append((setup, f"apply: {describe_change(agent.setup, setup)}"))
                    result.restarted.append(ap.name)
                else:
                    agent.reconfigure(setup)
                    result.unchanged.append(ap.name)
            result.left_out.extend(u.agent for u in left_out)
            self._record_left_out(left_out)
            if config_path is not None:
                self.config_path = Path(config_path).resolve()
            self._config = config
            self._plan = p
            self.warnings.extend(warnings)
            self._write_config_copy(config)
            mps_events(sup.event, p, placed_here, before)
            self._record_mps(p, placed_here)
            sup.roll(roll)
            self._publish()
            sup.event(
                EventKind.APPLIED,
                None,
                "applied: " + json.dumps(result.to_dict(), separators=(",", ":")),
            )
            return result
