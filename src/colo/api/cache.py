"""Small caches that keep the read routes fast under load.

- :class:`TtlCache` holds one value for ``ttl_secs`` (monotonic clock, injectable): GPU state is read from
  NVML and the MPS control pipe at most once per TTL however many clients poll ``/gpu/info`` and
  ``/metrics``.
- :class:`PlanDocCache` holds the rendered allocation document for the current plan object: a new plan
  (an apply) is a new object, so the identity check is the invalidation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from colo.plan.types import Plan

T = TypeVar("T")


class TtlCache(Generic[T]):
    """One value, refreshed by ``load`` when older than ``ttl_secs``. Thread-safe; loads run one at a time."""

    def __init__(self, ttl_secs: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_secs = ttl_secs
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._loaded_at: float | None = None

    def get(self, load: Callable[[], T]) -> T:
        """The cached value, or ``load()``'s result when none is fresh. ``load``'s errors propagate."""
        with self._lock:
            now = self._clock()
            if self._value is None or self._loaded_at is None or now - self._loaded_at >= self._ttl_secs:
                self._value = load()
                self._loaded_at = self._clock()
            return self._value

    def peek_fresh(self) -> T | None:
        """The value when it is still fresh, else None (never loads; no lock wait on the fast path)."""
        value, loaded_at = self._value, self._loaded_at
        if value is None or loaded_at is None or self._clock() - loaded_at >= self._ttl_secs:
            return None
        return value

    def clear(self) -> None:
        with self._lock:
            self._value = None
            self._loaded_at = None


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
