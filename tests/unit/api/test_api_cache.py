"""TtlCache (stale-while-revalidate) and PlanDocCache (once per plan object)."""

from __future__ import annotations

import threading

from colo.api.cache import TtlCache
from colo.clock import FakeClock


def test_fresh_value_is_reused_until_the_ttl() -> None:
    clock = FakeClock(start=0.0)
    cache: TtlCache[int] = TtlCache(1.0, clock)
    loads = iter(range(10))
    assert cache.get(lambda: next(loads)) == 0
    clock.advance(0.9)
    assert cache.get(lambda: next(loads)) == 0
    clock.advance(0.1)
    assert cache.get(lambda: next(loads)) == 1
    cache.clear()
    assert cache.get(lambda: next(loads)) == 2


def test_stale_value_is_served_while_another_caller_refreshes() -> None:
    clock = FakeClock(start=0.0)
    cache: TtlCache[str] = TtlCache(1.0, clock)
    cache.get(lambda: "old")
    clock.advance(5.0)
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(5)
        return "new"

    got: list[str] = []
    refresher = threading.Thread(target=lambda: got.append(cache.get(slow)))
    refresher.start()
    assert entered.wait(5)
    assert cache.get(lambda: "never called") == "old"  # does not wait for the refresh
    release.set()
    refresher.join(5)
    assert got == ["new"]
    assert cache.get(lambda: "never called") == "new"
