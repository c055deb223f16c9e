"""The source behind ``colo serve CONFIG``: the plan and the GPU state, with no agents running.

``colo serve`` answers the read routes (``/mps/allocation``, ``/gpu/info``, ``/agents``, ``/metrics``...)
from a configuration alone, for machines where colo plans but something else runs the agents. Agents are
reported from the plan with state STOPPED and no pid (colo serve supervises nothing); GPU processes still
show in ``/gpu/info``. Actions and ``/apply`` answer 409: there is nothing to act on.

Without a GPU (or NVML) ``/gpu/info`` still answers: ``mps_enabled: false`` and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from colo.api.source import ApiSource, ApplyOutcome, PolledGpu, pick_events
from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError, SupervisorError
from colo.files import state_dir
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend, NvmlBackend
from colo.plan import Plan
from colo.spec import ColoConfig, load_config
from colo.supervise.planning import plan_node
from colo.supervise.snapshots import AgentStatus, Event, EventKind, SystemSnapshot
from colo.supervise.state import AgentState
from colo.supervise.tune.inputs import TunedChange

READ_ONLY_HINT = "colo serve only shows the plan and the GPUs; run `colo up CONFIG` to run and manage agents"


class ReadOnlySource:
    """An :class:`~colo.api.source.ApiSource` over a fixed config and plan, a GPU backend and MPS daemons.

    ``fleet`` (``colo.gpu.mps.daemon.MpsFleet``) says where the daemons are; they are only read, never started
    or stopped. The GPUs and daemons are read by one poller of its own, on demand and at most once per
    ``poll_secs`` (``clock``'s monotonic seconds); ``clock``'s wall time stamps the one "planned" event.
    """

    def __init__(
        self,
        config: ColoConfig,
        current: Plan,
        backend: GpuBackend | None,
        *,
        fleet: MpsFleet | None = None,
        clock: Clock = SYSTEM_CLOCK,
        poll_secs: float = 1.0,
    ) -> None:
        self.config = config
        self.plan = current
        self.backend = backend
        self.fleet = fleet
        self._gpu = PolledGpu.over(config, backend, fleet, poll_secs=poll_secs, clock=clock)
        placed = len(current.placed)
        self._events = [
            Event(
                1,
                clock.wall(),
                EventKind.APPLIED,
                None,
                f"plan loaded read-only: {placed} agent(s) placed, {len(current.unplaced)} left out",
            ),
        ]
        self._statuses = [self._planned_status(a.name) for a in current.agents]
        self._statuses += [
            AgentStatus(
                u.agent,
                AgentState.STOPPED,
                None,
                None,
                None,
                u.limit_bytes,
                0,
                u.priority,
                0,
                last_error=f"not placed: {u.reason}",
            )
            for u in current.unplaced
        ]

    def _planned_status(self, name: str) -> AgentStatus:
        a = self.plan.agent(name)
        return AgentStatus(
            name=a.name,
            state=AgentState.STOPPED,
            pid=None,
            gpu=a.gpu.key if a.gpu else None,
            gpu_uuid=a.gpu.uuid if a.gpu else None,
            limit_bytes=a.limit_bytes,
            requirement_bytes=a.requirement_bytes,
            priority=a.priority,
            restarts=0,
            models=a.model_ids,
        )

    def statuses(self) -> list[AgentStatus]:
        """The agents as planned: STOPPED, no pid (colo serve runs nothing)."""
        return list(self._statuses)

    def snapshot(self) -> SystemSnapshot:
        """The plan's agents and the GPUs as last read (read now when the last reading is older than
        ``poll_secs``)."""
        gpu, taken_at = self._gpu.get()
        return SystemSnapshot(self.config, self.plan, tuple(self.statuses()), gpu, taken_at)

    def _refuse(self, what: str) -> NoReturn:
        raise SupervisorError(f"cannot {what}: this is a read-only colo serve", hint=READ_ONLY_HINT)

    def _known(self, name: str) -> None:
        if all(s.name != name for s in self._statuses):
            raise KeyError(name)

    def start(self, name: str) -> None:
        self._known(name)
        self._refuse(f"start {name!r}")

    def stop(self, name: str) -> None:
        self._known(name)
        self._refuse(f"stop {name!r}")

    def restart(self, name: str) -> None:
        self._known(name)
        self._refuse(f"restart {name!r}")

    def apply(self, config: ColoConfig, config_path: str | None = None, *, force: bool = False) -> ApplyOutcome:
        self._refuse("apply a configuration")

    def tune(self, changes: Sequence[TunedChange]) -> tuple[list[str], ApplyOutcome | None]:
        self._refuse("record tuned limits")

    def events(self, since_seq: int = 0, limit: int = 200, *, tail: bool = False) -> list[Event]:
        return pick_events(self._events, since_seq, limit, tail=tail)


def _nvml_backend() -> GpuBackend | None:
    """NVML when it answers, else None (no driver, no GPU)."""
    backend = NvmlBackend()
    try:
        backend.gpus()
    except (ColoError, OSError, ImportError):
        return None
    return backend


def _fleet(mps_root: Path, backend: GpuBackend | None) -> MpsFleet | None:
    """The per-GPU daemons under ``mps_root`` (only read: never started or stopped here)."""
    if backend is None:
        return None
    try:
        return MpsFleet(MpsRoot(mps_root), [g.uuid for g in backend.gpus()])
    except (ColoError, OSError):
        return None


def load_read_only(
    config_path: str | Path,
    *,
    backend: GpuBackend | None = None,
    use_nvml: bool = True,
    mps_root: Path | None = None,
) -> ApiSource:
    """Load ``config_path``, plan it, and return the read-only source ``colo serve`` runs.

    ``backend`` overrides NVML (tests); ``use_nvml=False`` serves with no GPU backend. ``mps_root`` is where
    the per-GPU MPS pipe dirs live (``colo.gpu.mps.daemon.MpsRoot``; default ``<state_dir>/mps``, where ``colo up``
    starts them); their daemons are read, never started.
    Raises ConfigError (bad file) or PlanError (nothing to plan against).
    """
    config = load_config(config_path)
    if backend is None and use_nvml:
        backend = _nvml_backend()
    current = plan_node(config, backend.gpus() if backend is not None else None).plan
    root = mps_root if mps_root is not None else MpsRoot.under_state_dir(state_dir(config.state_dir)).base_dir
    fleet = _fleet(root, backend)
    return ReadOnlySource(config, current, backend, fleet=fleet)
