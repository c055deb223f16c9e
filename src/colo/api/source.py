"""What the API needs from the running system: the :class:`ApiSource` Protocol.

The API never imports the supervisor and never reads a GPU: it serves the :class:`SystemSnapshot` its
source publishes (GPUs, MPS daemons/servers/clients, agents, plan) and forwards actions and applies.

- ``colo up`` hands its ``colo.supervise.orchestrator.Orchestrator`` (it publishes a snapshot per GPU poll);
- ``colo serve`` hands a :class:`colo.api.readonly.ReadOnlySource` (the plan, no agents, one GPU poller);
- tests hand :class:`colo.api.fake_source.FakeSource`.

A type-checking-only assertion at the bottom makes mypy prove the Orchestrator conforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from colo.api.cache import TtlCache
from colo.clock import SYSTEM_CLOCK, Clock
from colo.files import state_dir
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend
from colo.gpu.poller import GpuPoller, GpuState, no_gpu_state
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import Event, SystemSnapshot
from colo.supervise.tune.inputs import TunedChange


class ApplyOutcome(Protocol):
    """What an apply did (``colo.supervise.snapshots.ApplyResult`` is it)."""

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
    """The running system as the API sees it.

    Errors: ``KeyError`` for an unknown agent (actions); ``PlanError``/``DoesNotFitError``/``ConfigError`` from
    :meth:`apply` with nothing changed; ``SupervisorError`` when an action cannot be done now (for example
    on a read-only source) or before anything is published.
    """

    def snapshot(self) -> SystemSnapshot:
        """The latest published snapshot; cheap (never reads a GPU, never waits for the supervision loop)."""
        ...

    def events(self, since_seq: int = 0, limit: int = 200, *, tail: bool = False) -> list[Event]:
        """Events with seq greater than ``since_seq``, oldest first: the first ``limit`` of them, or with
        ``tail`` the newest ``limit``."""
        ...
    def start(self, name: str) -> object: ...
    def stop(self, name: str) -> object: ...
    def restart(self, name: str) -> object: ...
    def apply(self, config: ColoConfig, config_path: str | None = None, *, force: bool = False) -> ApplyOutcome:
        """Move to ``config``; ``config_path`` (the file it came from, when the client says) is what a later
        reload (SIGHUP) reads again. ``force``: take a plan that predicts an agent runs out of memory
        (else PredictedOutOfMemory, a PlanError)."""
        ...

    def tune(self, changes: Sequence[TunedChange]) -> tuple[list[str], ApplyOutcome | None]:
        """``colo tune --apply``: record the tuned limits (the running system is the tuned-limits file's
        writer) and apply its configuration again; returns the agents recorded and what the apply did."""
        ...


def pick_events(events: Sequence[Event], since_seq: int, limit: int, *, tail: bool = False) -> list[Event]:
    """:meth:`ApiSource.events` over a list held in memory (seq ascending), for the sources without a store."""
    after = [e for e in events if e.seq > since_seq]
    if limit <= 0:
        return []
    return after[-limit:] if tail else after[:limit]


class PolledGpu:
    """The GPU state of a source without a supervisor (``colo serve``, the fake): its one poller, read on
    demand at most once per ``poll_secs`` (stale-while-revalidate: a slow read never queues other requests).
    ``poller`` None: no GPU here."""

    def __init__(
        self, poller: GpuPoller | None, *, poll_secs: float = 1.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.poller = poller
        self._clock = clock
        self._cache: TtlCache[tuple[GpuState, float]] = TtlCache(poll_secs, clock)

    @classmethod
    def over(
        cls,
        config: ColoConfig,
        backend: GpuBackend | None,
        fleet: MpsFleet | None,
        *,
        poll_secs: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> PolledGpu:
        """One poller over ``backend`` (None: no GPU) and the MPS daemons of ``fleet``, or, without a fleet,
        those under ``config``'s state directory."""
        poller = None
        if backend is not None:
            if fleet is not None:
                poller = GpuPoller(backend, fleet.root, fleet.control)
            else:
                poller = GpuPoller(backend, MpsRoot.under_state_dir(state_dir(config.state_dir)))
        return cls(poller, poll_secs=poll_secs, clock=clock)

    def get(self) -> tuple[GpuState, float]:
        """The GPU state and the monotonic time it was read."""
        poller = self.poller
        if poller is None:
            return no_gpu_state(), 0.0
        return self._cache.get(lambda: (poller.read(), self._clock.monotonic()))


if TYPE_CHECKING:
    from colo.supervise.orchestrator import Orchestrator

    def _orchestrator_is_a_source(o: Orchestrator) -> ApiSource:
        return o
