"""Time, injected: a monotonic clock for durations, a wall clock for people, and a sleep.

The one clock convention of colo: code that reads or waits on time takes a :class:`Clock` parameter named
``clock`` (default :data:`SYSTEM_CLOCK`), never a bare callable such as ``time.monotonic``. Tests pass
:class:`FakeClock` and advance it (its ``sleep`` advances it) instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where time is read. ``monotonic()`` for durations (seconds), ``wall()`` for records, ``sleep(secs)``
    to wait (blocking the calling thread)."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, secs: float) -> None: ...


class SystemClock:
    """The real clocks: ``time.monotonic()`` and ``time.time()`` (seconds)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, secs: float) -> None:
        time.sleep(max(secs, 0.0))


SYSTEM_CLOCK: Clock = SystemClock()
"""The real clocks, shared (a :class:`SystemClock` holds no state): the default of every ``clock`` parameter."""


class FakeClock:
    """A clock tests move by hand. Starts at ``start`` seconds (both clocks advance together)."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall = wall_start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def sleep(self, secs: float) -> None:
        """Return at once, the clocks ``secs`` later (a wait that takes no time)."""
        self.advance(max(secs, 0.0))

    def advance(self, secs: float) -> None:
        """Move both clocks forward by ``secs`` (>= 0)."""
        if secs < 0:
            raise ValueError("a clock does not go backwards")
        self._mono += secs
        self._wall += secs
