"""The source behind ``colo serve CONFIG``: the plan and the GPU state, with no agents running.

``colo serve`` answers the read routes (``/mps/allocation``, ``/gpu/info``, ``/agents``, ``/metrics``...)
from a configuration alone, for machines where colo plans but something else runs the agents. Agents are
reported from the plan with state STOPPED and no pid (colo serve supervises nothing); GPU processes still
show in ``/gpu/info``. Actions and ``/apply`` answer 409: there is nothing to act on.

Without a GPU (or NVML) ``/gpu/info`` still answers: ``mps_enabled: false`` and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from colo.api.source import ApiSource, ApplyOutcome
from colo.errors import ColoError, PlanError, SupervisorError
from colo.files import state_dir
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend, NvmlBackend, slots_from_snapshots
from colo.plan import GpuSlot, Plan, inventory_slots, plan
from colo.plan.types import MemoryInputs
from colo.spec import ColoConfig, load_config
from colo.supervise.snapshots import AgentStatus, Event, EventKind
from colo.supervise.state import AgentState

READ_ONLY_HINT = "colo serve only shows the plan and the GPUs; run `colo up CONFIG` to run and manage agents"


class ReadOnlySource:
    """An :class:`~colo.api.source.ApiSource` over a fixed config and plan, a GPU backend and MPS daemons.

    ``fleet`` is an object with ``daemon(uuid)`` (``colo.gpu.mps.daemon.MpsFleet``) whose daemons are only read,
    never started or stopped. ``clock`` gives wall-clock seconds for the one "planned" event.
    """

    def __init__(
        self,
        config: ColoConfig,
        current: Plan,
        backend: GpuBackend | None,
        *,
        fleet: MpsFleet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._plan = current
        self._backend = backend
        self._fleet = fleet
        placed = len(current.placed)
        self._events = [
            Event(
                1,
                clock(),
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
        a = self._plan.agent(name)
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
        return list(self._statuses)

    def status(self, name: str) -> AgentStatus:
        for s in self._statuses:
            if s.name == name:
                return s
        raise KeyError(name)

    def _refuse(self, what: str) -> NoReturn:
        raise SupervisorError(f"cannot {what}: this is a read-only colo serve", hint=READ_ONLY_HINT)

    def start(self, name: str) -> None:
        self.status(name)
        self._refuse(f"start {name!r}")

    def stop(self, name: str) -> None:
        self.status(name)
        self._refuse(f"stop {name!r}")

    def restart(self, name: str) -> None:
        self.status(name)
        self._refuse(f"restart {name!r}")

    def apply(self, config: ColoConfig) -> ApplyOutcome:
        self._refuse("apply a configuration")

    def events(self, since_seq: int = 0, limit: int = 200) -> list[Event]:
        return [e for e in self._events if e.seq > since_seq][:limit]

    def current_plan(self) -> Plan:
        return self._plan

    def config(self) -> ColoConfig:
        return self._config

    def gpu_backend(self) -> GpuBackend | None:
        return self._backend

    def mps_fleet(self) -> MpsFleet | None:
        return self._fleet

    def mps_enabled(self) -> bool:
        """True when any of the fleet's daemons runs (read through the fleet; False without one)."""
        if self._fleet is None or self._backend is None:
            return False
        try:
            for g in self._backend.gpus():
                if g.uuid in self._fleet.gpu_uuids and self._fleet.daemon(g.uuid).is_running():
                    return True
        except (ColoError, OSError, KeyError):
            return False
        return False


def _nvml_backend() -> GpuBackend | None:
    """NVML when it answers, else None (no driver, no GPU)."""
    backend = NvmlBackend()
    try:
        backend.gpus()
    except (ColoError, OSError, ImportError):
        return None
    return backend


def _slots(config: ColoConfig, backend: GpuBackend | None) -> list[GpuSlot]:
    if config.gpus != "auto":
        return inventory_slots(config)
    if backend is None:
        raise PlanError(
            "gpus: auto, but no GPU can be read here",
            hint="list an inventory under 'gpus:' to serve the plan on a machine without a GPU",
        )
    return slots_from_snapshots(backend.gpus())


def _memory(config: ColoConfig, slots: list[GpuSlot]) -> MemoryInputs | None:
    """Measured/estimated memory from the model database when the policy says ``memory_source: db``."""
    if config.policy.memory_source != "db":
        return None
    from colo.memory.db import ModelDB
    from colo.memory.resolve import plan_memory

    return plan_memory(config, ModelDB.open_default(config), slots[0].name if slots else None)


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
    slots = _slots(config, backend)
    current = plan(config, slots, _memory(config, slots))
    root = mps_root if mps_root is not None else MpsRoot.under_state_dir(state_dir(config.state_dir)).base_dir
    fleet = _fleet(root, backend)
    return ReadOnlySource(config, current, backend, fleet=fleet)
