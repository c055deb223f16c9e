"""The running system: plan against the GPUs, start the per-GPU MPS daemons, launch and supervise agents.

``colo up`` builds an :class:`Orchestrator`, calls :meth:`Orchestrator.up`, then :meth:`Orchestrator.run` until
told to stop; the API reads its published :meth:`Orchestrator.snapshot` and calls its actions and
:meth:`Orchestrator.apply`, all under one lock. State lives in ``<state_dir>`` (``colo.db``, ``logs/``,
``mps/<uuid>/{pipe,log}``, ``config.yaml``, ``colo.pid``, ``colo.lock``: :mod:`colo.supervise.statedir`).

The orchestrator is the loop; every plan it takes comes from :func:`colo.supervise.planning.plan_run`. The rooms
it calls: ``lockfile``, ``startup`` (the MPS fleet, the GPU reading, the supervisor), ``fleet`` and
``mps_switch`` (the per-GPU MPS daemons and the record of those colo started), ``adoption``, ``supervisor``
(the loop over agents, with ``recovery/``), ``rollout``, ``roster`` (statuses), ``tune/rollback``, ``shutdown``
and ``up_record``. The CLI reaches it through its HTTP API (``colo.api``), ``colo down`` through a signal.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError, PlanError, SupervisorError
from colo.files import write_atomic
from colo.gpu import procs
from colo.gpu.mps.control import MpsControl
from colo.gpu.nvml import GpuBackend, GpuSnapshot
from colo.launch.fork_runner import make_runner
from colo.launch.health import HealthChecker, Probe
from colo.launch.runner import Runner
from colo.plan.types import AgentPlan, Plan
from colo.spec.config import ColoConfig, MpsMode
from colo.supervise import planning, roster
from colo.supervise.adoption import take_over
from colo.supervise.agent import STARTING_PROBE_SECS, AgentSetup
from colo.supervise.fleet import NodeFleet
from colo.supervise.lockfile import StateLock
from colo.supervise.logs import AgentLogs
from colo.supervise.mps_switch import MpsSwitch, mps_events, mps_labels
from colo.supervise.publish import Publisher
from colo.supervise.recovery.mps_hooks import FleetHooks
from colo.supervise.rollout import refuse_left_out, roll_out
from colo.supervise.shutdown import stop_agents
from colo.supervise.snapshots import AgentStatus, ApplyResult, Event, EventKind, SystemSnapshot
from colo.supervise.startup import publisher_for, start_launcher, start_mps, supervisor_for
from colo.supervise.state import AgentState
from colo.supervise.statedir import StateDirPaths, config_yaml, resolve_state_dir
from colo.supervise.store import Store
from colo.supervise.supervisor import Supervisor
from colo.supervise.tune import rollback
from colo.supervise.tune.history import UsageRecorder
from colo.supervise.tune.inputs import TunedChange, write_tuned
from colo.supervise.up_record import (
    UpResult,
    daemon_events,
    forget_orchestrator,
    record_left_out,
    record_mps,
    record_orchestrator,
)

TICK_SECS = 0.5


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
        self._lock = threading.RLock()
        self._lock_file = StateLock(self.paths)
        self._plan: Plan | None = None
        self._fleet: NodeFleet | None = None
        self._woke: set[int] = set()  # pids that woke the run loop (see _wait_for_next_tick)
        self._mps_switch: MpsSwitch | None = None  # the fleet following the plan's MPS decisions
        self.store = Store(self.paths.db)
        self.logs = AgentLogs(self.paths.logs)
        self.supervisor: Supervisor | None = None
        self.warnings: list[str] = []
        self._stopping = False
        self._published = Publisher(None, self.clock)
        self.usage = UsageRecorder.for_policy(self.store, self.clock, config.policy)

    # --- the API's surface ---------------------------------------------------------------------------

    def config(self) -> ColoConfig:
        """The configuration now in force."""
        return self._config

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
            return roster.statuses(self._sup(), self._plan, self._config)

    def status(self, name: str) -> AgentStatus:
        """One agent's status. Raises KeyError for an agent not in the configuration."""
        with self._lock:
            return roster.status(self._sup(), self._plan, self._config, name)

    def start(self, name: str) -> AgentStatus:
        """Start an agent (also from FATAL/EXITED). Raises KeyError, PlanError (left out)."""
        return self._act(name, "start")

    def stop(self, name: str) -> AgentStatus:
        """Stop an agent (stays STOPPED until started). Raises KeyError, PlanError (left out)."""
        return self._act(name, "stop")

    def restart(self, name: str) -> AgentStatus:
        """Restart an agent. Raises KeyError, PlanError (left out)."""
        return self._act(name, "restart")

    def _act(self, name: str, verb: str) -> AgentStatus:
        with self._lock:
            agent = roster.agent_for_action(self._sup(), self._plan, name)
            if verb != "stop":
                agent.hold = False
            {"start": agent.start, "stop": agent.stop, "restart": agent.restart}[verb](f"{verb} requested")
            self._publish()
            return self.status(name)

    def events(self, since_seq: int = 0, limit: int = 200, *, tail: bool = False) -> list[Event]:
        """Events after ``since_seq`` (oldest first): the first ``limit``, or with ``tail`` the newest ``limit``."""
        return self.store.events(since_seq, limit, tail=tail)

    def _sup(self) -> Supervisor:
        if self.supervisor is None:
            raise SupervisorError("colo is not up yet")
        return self.supervisor

    # --- planning ------------------------------------------------------------------------------------

    def _gpus(self, config: ColoConfig) -> list[GpuSnapshot] | None:
        """NVML's GPUs here (the injected backend's in tests), None when they cannot be read."""
        if not self._backend_given:
            self._backend_given = True  # do not try again
            self._backend = planning.open_backend(config)
        return list(self._backend.gpus()) if self._backend is not None else None

    def make_plan(self, config: ColoConfig, *, force: bool = False) -> planning.NodePlan:
        """Plan ``config`` here with the state dir's tuned limits, running agents kept on their GPUs — the one
        path of every plan this orchestrator takes (:func:`colo.supervise.planning.plan_run`). Raises
        PredictedOutOfMemory (unless ``force``), ConfigError, PlanError, GpuError."""
        return planning.plan_run(
            config, self._gpus(config), state_dir=self.paths.root, node=self.node, mps_mode=self.mps_mode,
            use_mps=self.want_mps, force=force, keep=planning.placement_of(self._plan),
        )

    def setup_for(self, config: ColoConfig, ap: AgentPlan) -> AgentSetup:
        """How ``ap`` is launched here (see :func:`colo.supervise.planning.launch_setup`)."""
        root = self._fleet.root if self._fleet is not None else None
        return planning.launch_setup(config, ap, config_copy=self.paths.config_copy, mps_root=root)

    # --- up / run / down -----------------------------------------------------------------------------

    def up(self, planned: planning.NodePlan | None = None, *, force: bool = False) -> UpResult:
        """Plan (or take ``planned``, made by :func:`~colo.supervise.planning.plan_run` with this
        orchestrator's settings: ``colo up`` plans before it detaches), start the MPS daemons, re-adopt live
        agents from the store, launch the rest by priority.

        Raises PredictedOutOfMemory (unless ``force``), ConfigError, PlanError, GpuError, MpsError,
        SupervisorError (nothing is left running then).
        """
        with self._lock:
            self._lock_file.acquire()
            try:
                return self._up(planned or self.make_plan(self._config, force=force))
            except BaseException:
                if self._fleet is not None:
                    with contextlib.suppress(ColoError):
                        self._stop_daemons()
                self.runner.close()  # a launcher started for this up
                self._lock_file.release()
                raise

    def _up(self, planned: planning.NodePlan) -> UpResult:
        config, p = self._config, planned.plan
        self._gpus(config)  # the poller reads the GPUs the plan was made on
        self.warnings.extend(planned.warnings)
        mine, left_out = planned.local()
        elsewhere = planned.elsewhere()
        if elsewhere:
            self.warnings.append(f"placed on other nodes (not run here, node {planned.here()!r}): {', '.join(elsewhere)}")
        on_gpus = sorted({ap.gpu.uuid for ap in mine if ap.gpu is not None and ap.gpu.uuid})
        uuids = planning.mps_gpu_uuids(p, mine)  # the GPUs the plan runs MPS on (policy.mps)
        start_launcher(self.runner, config, mine if self.run_agents else [], self.logs.dir, self.config_path)
        started_d: list[str] = []
        adopted_d: list[str] = []
        if self.want_mps and on_gpus:
            self._mps_switch, started_d, adopted_d = start_mps(
                self.paths.root, self.store, self._mps_control, uuids, on_gpus, self._hooks
            )
            self._fleet = self._mps_switch.fleet
        elif self.want_mps:
            self.warnings.append("MPS not started: no agent is placed on a GPU with a UUID on this machine")
        self._plan = p
        self._write_config_copy(config)
        self._published = publisher_for(self._backend, self._fleet, self.paths.root, self.clock)
        self.supervisor = sup = supervisor_for(
            self.runner, self.probe, self.clock, self.store, self.logs, self._fleet, self._published,
            fault_wait_secs=self.fault_wait_secs, usage=self.usage,
        )
        self.usage.rows = self.store.usage_rows()
        daemon_events(sup.event, started_d, adopted_d)
        mps_events(sup.event, p, mine)
        records = self.store.agents()
        self._lock_file.write_pid()
        self.store.delete_meta("api_url")  # the CLI records it again once its API serves
        launch = [self.setup_for(config, ap) for ap in mine] if self.run_agents else []  # else: pods/units
        done = take_over(sup, self.runner, records, launch)
        sup.roll(done.roll)
        for u in left_out:
            sup.event(EventKind.STOPPED, u.agent, f"left out ({u.priority}): {u.reason}")
        record_left_out(self.store, left_out)
        record_orchestrator(self.store, self.paths.root, self.config_path, config, mps_labels(p, mine) if self._fleet else [])
        self._published.poll(force=True)
        self._publish()
        return UpResult(done.started, done.adopted, left_out, started_d, adopted_d, bool(uuids), self.warnings)

    def _hooks(self) -> FleetHooks | None:
        mps = self.supervisor.mps if self.supervisor is not None else None
        return mps if isinstance(mps, FleetHooks) else None

    def _write_config_copy(self, config: ColoConfig) -> None:
        if any(a.command is None for a in config.agents.values()):
            write_atomic(self.paths.config_copy, config_yaml(config, self.config_path))

    def tick(self) -> None:
        """One supervision pass: read the GPUs (when due), every agent, MPS and rolling restarts; then publish
        the snapshot."""
        with self._lock:
            if self._fleet is not None:
                self._fleet.reap()
            self._published.poll()
            self._sup().tick()
            if self._mps_switch is not None and self._mps_switch.retiring:
                self._mps_switch.tick(self._sup().settling_on, self._sup().event)
            for name in self._sup().take_ooms():
                self._roll_back(name)
            self._publish()

    def _roll_back(self, name: str) -> None:
        """``name`` ran out of memory: when its limit is a tuned one, mark its tuned entry rolled back
        (:mod:`colo.supervise.tune.rollback`) and plan again — the plan gives it the limit it had before;
        forced, as that plan already ran — so only the agents whose limit moved restart (``name``)."""
        sup = self._sup()
        agent = sup.agents.get(name)
        if self._plan is None or agent is None:
            return
        try:
            restore = rollback.mark_rolled_back(
                self.paths.tuned_limits, self._plan.agent(name), agent.setup.limit_bytes, self.clock.wall()
            )
        except (KeyError, ColoError):
            return
        if restore is None:
            return
        try:
            self._move_to(self._config, self.make_plan(self._config, force=True), "rollback")
            text = rollback.event_text(agent.setup.limit_bytes, self._plan.agent(name).limit_bytes, None)
        except ColoError as exc:
            text = rollback.event_text(agent.setup.limit_bytes, restore, exc)
        sup.event(EventKind.ROLLED_BACK, name, text, agent.setup.launch.gpu)

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
        loop at once (pidfds); while an agent is STARTING, at most its probe cadence. A pid that woke the loop
        does not wake it again (a zombie stays "exited" until reaped)."""
        with self._lock:
            agents = self._sup().agents.values()
            pids = {a.handle.pid for a in agents if a.handle is not None}
            if any(a.state is AgentState.STARTING for a in agents):
                tick_secs = min(tick_secs, STARTING_PROBE_SECS)
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
            stop_agents(sup, self.runner, self._lock, self.clock, timeout_secs)
        with self._lock:
            try:
                self._stop_daemons()
            finally:
                with contextlib.suppress(ColoError):
                    forget_orchestrator(self.store)
                self.runner.close()  # the pre-imported launcher, if any
                self._lock_file.remove_pid()
                self._lock_file.release()

    def _stop_daemons(self) -> None:
        sup = self.supervisor
        if self._fleet is not None:
            self._fleet.stop_started(
                lambda uuid, _: sup and sup.event(EventKind.DAEMON, None, f"stopped the MPS daemon of {uuid}", uuid)
            )

    # --- apply ---------------------------------------------------------------------------------------

    def apply(self, config: ColoConfig, config_path: str | Path | None = None, *, force: bool = False) -> ApplyResult:
        """Plan ``config`` and move to it: start new agents, stop removed ones, restart (one at a time) only
        those whose limit, placement, command or env changed. ``config_path``: the file it came from, which
        a later reload (SIGHUP) reads again. ``force``: take a plan that predicts out-of-memory.

        Raises PredictedOutOfMemory (unless ``force``), DoesNotFitError when an agent above ``low`` priority
        would be left out, PlanError/ConfigError when it cannot be planned, PlanError when it needs a GPU
        without a running MPS daemon — nothing is changed then.
        """
        with self._lock:
            result = self._move_to(config, self.make_plan(config, force=force), "apply")
            if config_path is not None:
                self.config_path = Path(config_path).resolve()
            self._sup().event(
                EventKind.APPLIED, None, "applied: " + json.dumps(result.to_dict(), separators=(",", ":"))
            )
            return result

    def _move_to(self, config: ColoConfig, planned: planning.NodePlan, why: str) -> ApplyResult:
        """Take ``planned`` (of ``config``): MPS daemons first, then the agents (:func:`roll_out`)."""
        sup = self._sup()
        p = planned.plan
        mine, left_out = planned.local()
        refuse_left_out(left_out)
        if self.want_mps and self._fleet is None and planning.mps_gpu_uuids(p, mine):
            raise PlanError(
                "the new plan runs MPS on a GPU, and this colo started without GPUs it could run MPS on",
                hint="run `colo down` and `colo up`",
            )
        before = self._plan
        if self._mps_switch is not None:  # daemons first: the agents switching to MPS restart as their clients
            self._mps_switch.switch(p, mine, sup.event)
        here = [self.setup_for(config, ap) for ap in mine] if self.run_agents else []  # else: pods/units
        result = roll_out(sup, {s.name: s for s in here}, why)
        result.left_out.extend(u.agent for u in left_out)
        record_left_out(self.store, left_out)
        self._config, self._plan = config, p
        self.warnings.extend(planned.warnings)
        self._write_config_copy(config)
        mps_events(sup.event, p, mine, before)
        record_mps(self.store, mps_labels(p, mine) if self._fleet is not None else [])
        self._publish()
        return result

    def tune(self, changes: Sequence[TunedChange]) -> tuple[list[str], ApplyResult | None]:
        """``colo tune --apply``: record ``changes`` in the tuned-limits file (under its lock: this process
        is its writer) and apply the configuration in force again, so the agents whose limit changed restart
        one at a time. Returns the agents whose limit was recorded and what the apply did (None when nothing
        changed). Raises ConfigError (an agent not in the configuration, a corrupt file), PlanError."""
        with self._lock:
            written = write_tuned(self._config, self.paths.root, changes, now=self.clock.wall())
            if not written:
                return [], None
            return sorted(written), self.apply(self._config, force=True)
