"""The parts ``colo up`` puts together before the loop runs: the MPS fleet of the GPUs the plan runs MPS on
(started, or adopted after an orchestrator restart, following the plan through :class:`MpsSwitch`), the one
GPU reading (:class:`~colo.supervise.publish.Publisher`), and the supervisor that watches the agents, their
MPS daemons and their memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from colo.clock import Clock
from colo.errors import ColoError
from colo.gpu.mps.control import MpsControl
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend
from colo.gpu.poller import GpuPoller
from colo.launch import prestart
from colo.launch.fork_runner import ForkRunner, make_runner
from colo.launch.health import Probe
from colo.launch.runner import Runner
from colo.plan.types import AgentPlan
from colo.spec.config import ColoConfig
from colo.supervise.fleet import MPS_COMMAND_TIMEOUT_SECS, NodeFleet
from colo.supervise.logs import AgentLogs
from colo.supervise.mps_switch import MpsSwitch
from colo.supervise.publish import Publisher
from colo.supervise.recovery.mps_hooks import FleetHooks
from colo.supervise.store import Store
from colo.supervise.supervisor import Supervisor
from colo.supervise.tune.history import UsageRecorder


def start_launcher(
    runner: Runner, config: ColoConfig, agents: Sequence[AgentPlan], logs_dir: Path, config_path: Path | None
) -> bool:
    """Start ``runner``'s pre-imported launcher now, when it is a fork runner and one of ``agents`` (those this
    node runs) is a built-in agent of ``config``, which it forks: its imports (seconds of torch and
    transformers, and the model classes of ``config_path``'s agents) then run while the MPS daemons start
    (the orchestrator calls it just before them), not after them at the first spawn. Returns whether it was
    started. Never raises: a launcher that cannot start is reported by the first spawn, which spawns."""
    if not isinstance(runner, ForkRunner) or not forks_an_agent(config, [ap.name for ap in agents]):
        return False
    runner.start(logs_dir, models_of=config_path)
    return True


def early_runner(config: ColoConfig, config_path: Path, logs_dir: Path) -> Runner | None:
    """For ``colo up`` before it plans: the runner of ``policy.launcher`` with its launcher importing already
    (the model classes of ``config_path`` too), when ``config`` is of one node (whatever is planned, this
    machine runs every agent) and one of its agents runs the built-in agent; else None (the orchestrator makes
    its own runner). The caller closes it when it does not hand it to an orchestrator. The launcher the console
    script started for this command (:mod:`colo.launch.prestart`) becomes this runner's, or is ended here."""
    one_node = config.gpus == "auto" or len({row.node for row in config.gpus}) == 1
    runner = make_runner(config.policy.launcher)
    if not one_node or not forks_an_agent(config, list(config.agents)) or not isinstance(runner, ForkRunner):
        prestart.discard()
        return None
    runner.start(logs_dir, models_of=config_path)
    return runner


def forks_an_agent(config: ColoConfig, names: Sequence[str]) -> bool:
    """Whether one of the agents ``names`` of ``config`` runs the built-in agent (what the launcher forks)."""
    return any(config.agents[name].command is None for name in names)


def start_mps(
    state_root: Path,
    store: Store,
    control: MpsControl | None,
    mps_uuids: Sequence[str],
    on_gpus: Sequence[str],
    hooks: Callable[[], FleetHooks | None],
) -> tuple[MpsSwitch, list[str], list[str]]:
    """Start (or adopt) the daemon of each GPU in ``mps_uuids``; returns the switch that keeps the fleet in
    step with later plans (``on_gpus``: every GPU of this node with agents; a GPU an earlier orchestrator ran
    MPS on and this plan does not is retired), and the GPUs whose daemon was started and adopted. The fleet
    exists even when no GPU runs MPS yet: an apply that places a second agent on a GPU (``policy.mps:
    auto``) takes that GPU into it. Raises MpsError (the daemons started before are stopped again)."""
    fleet = NodeFleet(state_root, mps_uuids, control, store)
    switch = MpsSwitch(fleet, hooks=hooks)
    try:
        started, adopted = fleet.start_all()
    except ColoError:
        with contextlib.suppress(ColoError):
            fleet.stop_started()
        raise
    switch.keep_leftovers(mps_uuids, on_gpus)
    return switch, started, adopted


def publisher_for(backend: GpuBackend | None, fleet: NodeFleet | None, state_root: Path, clock: Clock) -> Publisher:
    """The node's one GPU reader (NVML and the fleet's daemons); without NVML there is no GPU reading."""
    if backend is None:
        return Publisher(None, clock)
    root = fleet.root if fleet is not None else MpsRoot.under_state_dir(state_root)
    control = fleet.control if fleet is not None else None
    return Publisher(GpuPoller(backend, root, control, command_timeout_secs=MPS_COMMAND_TIMEOUT_SECS), clock)


def supervisor_for(
    runner: Runner,
    probe: Probe,
    clock: Clock,
    store: Store,
    logs: AgentLogs,
    fleet: NodeFleet | None,
    published: Publisher,
    *,
    fault_wait_secs: float,
    usage: UsageRecorder,
) -> Supervisor:
    """The supervisor of this node's agents: MPS faults watched on ``fleet``'s GPUs (FAULT read from the GPU
    reading when there is one, else asked of the daemons), each agent's GPU memory from the reading."""
    reading = published.reading if published.poller is not None else None
    return Supervisor(
        runner=runner,
        probe=probe,
        clock=clock,
        store=store,
        logs=logs,
        mps=FleetHooks(fleet.mps, reading, clock=clock) if fleet is not None else None,
        gpu_memory=published.tree_memory if reading is not None else None,
        fault_wait_secs=fault_wait_secs,
        usage=usage,
    )
