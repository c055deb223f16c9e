"""What the API needs from the running system: the :class:`ApiSource` Protocol.

The API never imports the supervisor. ``colo up`` hands its ``colo.supervise.orchestrator.Orchestrator``
to :func:`colo.api.app.create_app`; that class satisfies this Protocol structurally (same method names
and meanings). ``colo serve`` hands a :class:`colo.api.readonly.ReadOnlySource` instead (plan and GPU
state, no agents running). Tests use a fake beside them in ``tests/unit/api``.

A type-checking-only assertion at the bottom makes mypy prove the Orchestrator conforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.nvml import GpuBackend
from colo.plan.types import Plan
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import AgentStatus, Event


class ApplyOutcome(Protocol):
    """What an apply did (``colo.supervise.orchestrator.ApplyResult`` has these fields)."""

    @property
    def restarted(self) -> Sequence[str]: ...
    @property
    def started(self) -> Sequence[str]: ...
    @property
    def stopped(self) -> Sequence[str]: ...
    @property
    def unchanged(self) -> Sequence[str]: ...
    @property
    def left_out(self) -> Sequence[str]: ...


class ApiSource(Protocol):
    """The running system as the API sees it (the brief's ``Orchestrator`` methods).

    Errors: ``KeyError`` for an unknown agent; ``PlanError``/``DoesNotFitError``/``ConfigError`` from
    :meth:`apply` with nothing changed; ``SupervisorError`` when an action cannot be done now (for example
    on a read-only source); ``GpuError``/``MpsError`` when the GPU or its daemon cannot be read.
    """

    def statuses(self) -> list[AgentStatus]: ...
    def status(self, name: str) -> AgentStatus: ...
    def start(self, name: str) -> object: ...
    def stop(self, name: str) -> object: ...
    def restart(self, name: str) -> object: ...
    def apply(self, config: ColoConfig) -> ApplyOutcome: ...
    def events(self, since_seq: int = 0, limit: int = 200) -> list[Event]: ...
    def current_plan(self) -> Plan: ...
    def config(self) -> ColoConfig: ...
    def gpu_backend(self) -> GpuBackend | None: ...
    def mps_fleet(self) -> MpsFleet | None: ...
    def mps_enabled(self) -> bool: ...


if TYPE_CHECKING:
    from colo.supervise.orchestrator import Orchestrator

    def _orchestrator_is_a_source(o: Orchestrator) -> ApiSource:
        return o
