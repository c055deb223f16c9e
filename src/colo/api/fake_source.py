"""The fake :class:`~colo.api.source.ApiSource` shipped beside the real ones, for tests on CPU.

An in-memory orchestrator: a configuration, a plan and agent statuses given up front, events, and a GPU side
read through the real :class:`~colo.gpu.poller.GpuPoller` over whatever backend and MPS fleet the test
gives (``colo.gpu.fake_nvml``, ``colo.gpu.mps.fake``), at most once per ``poll_secs`` like ``colo serve``.
It records actions and applies, and can be told to fail or to block an apply.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from colo.api.source import PolledGpu, pick_events
from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.nvml import GpuBackend
from colo.plan import Plan, inventory_slots, plan
from colo.spec import ColoConfig
from colo.supervise.snapshots import AgentStatus, ApplyResult, Event, EventKind, SystemSnapshot
from colo.supervise.tune.inputs import TunedChange


class FakeSource:
    """An :class:`~colo.api.source.ApiSource` held in memory. Public attributes are the test's handles:
    ``config``, ``plan``, ``statuses`` (by name), ``backend``, ``fleet``, ``calls`` (actions seen),
    ``applied`` (configs applied), ``apply_result`` (what every apply answers), ``action_error``/``apply_error`` (raised when set), ``apply_entered`` and
    ``apply_release`` (to hold an apply open)."""

    def __init__(
        self,
        config: ColoConfig,
        current: Plan,
        statuses: Sequence[AgentStatus] = (),
        *,
        events: Sequence[Event] = (),
        backend: GpuBackend | None = None,
        fleet: MpsFleet | None = None,
        poll_secs: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.plan = current
        self.statuses = {s.name: s for s in statuses}
        self._events = list(events)
        self.backend = backend
        self.fleet = fleet
        self._gpu = PolledGpu.over(config, backend, fleet, poll_secs=poll_secs, clock=clock)
        self.calls: list[tuple[str, str]] = []
        self.action_error: ColoError | None = None
        self.apply_error: ColoError | None = None
        self.applied: list[ColoConfig] = []
        self.applied_paths: list[str | None] = []
        self.forced: list[bool] = []
        self.tuned: list[TunedChange] = []
        self.apply_result = ApplyResult()
        self.apply_entered = threading.Event()
        self.apply_release: threading.Event | None = None

    def snapshot(self) -> SystemSnapshot:
        gpu, taken_at = self._gpu.get()
        return SystemSnapshot(self.config, self.plan, tuple(self.statuses.values()), gpu, taken_at)

    def _act(self, verb: str, name: str) -> None:
        self.statuses[name]  # KeyError for an unknown agent, like the orchestrator
        if self.action_error:
            raise self.action_error
        self.calls.append((verb, name))

    def start(self, name: str) -> None:
        self._act("start", name)

    def stop(self, name: str) -> None:
        self._act("stop", name)

    def restart(self, name: str) -> None:
        self._act("restart", name)

    def tune(self, changes: Sequence[TunedChange]) -> tuple[list[str], ApplyResult | None]:
        """Record ``changes`` (in ``tuned``) and answer ``apply_result`` (or raise ``apply_error``)."""
        if self.apply_error:
            raise self.apply_error
        self.tuned.extend(changes)
        return sorted(c.agent for c in changes), self.apply_result if changes else None

    def apply(self, config: ColoConfig, config_path: str | None = None, *, force: bool = False) -> ApplyResult:
        """Plan ``config`` on its inventory and take it (or raise ``apply_error``); ``forced`` records
        ``force``."""
        self.apply_entered.set()
        if self.apply_release is not None:
            self.apply_release.wait(5)
        if self.apply_error:
            raise self.apply_error
        self.applied.append(config)
        self.applied_paths.append(config_path)
        self.forced.append(force)
        self.config = config
        self.plan = plan(config, inventory_slots(config))
        return self.apply_result

    def events(self, since_seq: int = 0, limit: int = 200, *, tail: bool = False) -> list[Event]:
        return pick_events(self._events, since_seq, limit, tail=tail)

    def add_event(self, message: str, *, time_secs: float = 1_700_000_100.0) -> None:
        """Append a ``restarted`` event of agent ``scout``."""
        self._events.append(Event(len(self._events) + 1, time_secs, EventKind.RESTARTED, "scout", message))
