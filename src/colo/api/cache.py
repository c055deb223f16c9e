"""Small caches that keep the read routes fast under load.

- :class:`TtlCache` holds one value for ``ttl_secs`` (an injected :class:`~colo.clock.Clock`'s monotonic
  seconds): GPU state is read from NVML and the MPS control pipe at most once per TTL however many clients poll
  ``/gpu/info`` and ``/metrics``, and a refresh never makes other requests wait.
- :class:`PlanDocCache` holds the rendered allocation document for the current plan object: a new plan
  (an apply) is a new object, so the identity check is the invalidation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from colo.clock import SYSTEM_CLOCK, Clock
from colo.plan.types import Plan

T = TypeVar("T")


class TtlCache(Generic[T]):
    """One value, refreshed by ``load`` when older than ``ttl_secs``. Thread-safe.

    Stale-while-revalidate: once a value exists, a stale read by one caller refreshes it while concurrent
    callers get the previous value at once, so a slow read of the GPU (the MPS control pipe answers in tens of
    milliseconds) never queues other requests. Only the very first load is waited for.
    """

    def __init__(self, ttl_secs: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._ttl_secs = ttl_secs
        self._clock = clock
        self._lock = threading.Lock()
        # (value, loaded_at) swapped as one tuple so a reader never sees a value with another's time.
        self._entry: tuple[T, float] | None = None

    def get(self, load: Callable[[], T]) -> T:
        """A fresh value, or the stale one while another caller refreshes it. ``load``'s errors propagate."""
        entry = self._entry
        if entry is not None and self._clock.monotonic() - entry[1] < self._ttl_secs:
            return entry[0]
        if entry is not None:
            if not self._lock.acquire(blocking=False):
                return entry[0]  # someone is refreshing: serve the previous value
        else:
            self._lock.acquire()
        try:
            entry = self._entry
            if entry is None or self._clock.monotonic() - entry[1] >= self._ttl_secs:
                value = load()
                entry = (value, self._clock.monotonic())
                self._entry = entry
            return entry[0]
        finally:
            self._lock.release()

    def fresh(self) -> T | None:
        """The value if it is fresh, else None. Never loads and never waits."""
        entry = self._entry
        if entry is not None and self._clock.monotonic() - entry[1] < self._ttl_secs:
            return entry[0]
        return None

    def clear(self) -> None:
        """Forget the value (waits for a running load)."""
        with self._lock:
            self._entry = None


class PlanDocCache:
    """The allocation document of the last plan seen, as JSON bytes, rebuilt when the plan object changes."""

    def __init__(self, render: Callable[[Plan], dict[str, object]]) -> None:
        self._render = render
        self._lock = threading.Lock()
        # (plan, body) swapped as one tuple; the plan is held so its identity cannot be reused while cached.
        self._entry: tuple[Plan, bytes] | None = None

    def body(self, plan: Plan) -> bytes:
        """UTF-8 JSON of ``render(plan)``; rendered once per plan object."""
        entry = self._entry
        if entry is not None and entry[0] is plan:
            return entry[1]
        with self._lock:
            entry = self._entry
            if entry is None or entry[0] is not plan:
                entry = (plan, json.dumps(self._render(plan), separators=(",", ":")).encode("utf-8"))
                self._entry = entry
            return entry[1]
