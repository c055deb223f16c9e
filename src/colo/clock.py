"""Time for the supervisor, injected: a monotonic clock for durations and a wall clock for people.

Tests pass :class:`FakeClock` and advance it instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where the supervisor reads time. ``monotonic()`` for durations (seconds), ``wall()`` for records."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clocks: ``time.monotonic()`` and ``time.time()`` (seconds)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock tests move by hand. Starts at ``start`` seconds (both clocks advance together)."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall = wall_start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, secs: float) -> None:
        """Move both clocks forward by ``secs`` (>= 0)."""
        if secs < 0:
            raise ValueError("a clock does not go backwards")
        self._mono += secs
        self._wall += secs
