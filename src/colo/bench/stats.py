"""Benchmark statistics: percentiles, throughput, scaling efficiency, MPS / time-slicing ratio (pure).

Definitions (the seed guide's, made exact):

- *individual* throughput: one instance's items (sequences, tokens) per second over its timed window;
- *aggregate* throughput at N: the sum of the N instances' individual throughputs (they run concurrently for
  the same duration);
- *scaling efficiency* at N = aggregate(N) / (N × aggregate(1)), as a fraction (0.97 = 97 %);
- *MPS / time-slicing ratio* at N = aggregate under MPS / aggregate under time-slicing;
- *bound fraction* = aggregate(N) / merged(N), where merged(N) is one process doing the same total work with
  the merged batch (the upper bound co-location is measured against).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LatencySummary:
    """Per-request latency over a point (seconds)."""

    count: int
    mean_secs: float
    p50_secs: float
    p90_secs: float
    p99_secs: float
    max_secs: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: NaN (no requests) becomes None."""
        return {
            "count": self.count,
            "mean_secs": finite(self.mean_secs),
            "p50_secs": finite(self.p50_secs),
            "p90_secs": finite(self.p90_secs),
            "p99_secs": finite(self.p99_secs),
            "max_secs": finite(self.max_secs),
        }


def finite(value: float | None) -> float | None:
    """``value``, or None for NaN/inf/None (JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


EMPTY_LATENCY = LatencySummary(0, math.nan, math.nan, math.nan, math.nan, math.nan)


def latency_from_dict(raw: dict[str, Any]) -> LatencySummary:
    """Inverse of :meth:`LatencySummary.to_dict` (None back to NaN)."""

    def num(key: str) -> float:
        value = raw.get(key)
        return math.nan if value is None else float(value)

    return LatencySummary(
        count=int(raw.get("count", 0)),
        mean_secs=num("mean_secs"),
        p50_secs=num("p50_secs"),
        p90_secs=num("p90_secs"),
        p99_secs=num("p99_secs"),
        max_secs=num("max_secs"),
    )


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0..100) by linear interpolation between closest ranks (numpy's default).

    Returns NaN for no values. Raises ValueError for ``pct`` outside 0..100.
    """
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile {pct} is outside 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_latencies(latencies_secs: Sequence[float]) -> LatencySummary:
    """p50/p90/p99/mean/max of request latencies (seconds); :data:`EMPTY_LATENCY` for none."""
    if not latencies_secs:
        return EMPTY_LATENCY
    return LatencySummary(
        count=len(latencies_secs),
        mean_secs=sum(latencies_secs) / len(latencies_secs),
        p50_secs=percentile(latencies_secs, 50),
        p90_secs=percentile(latencies_secs, 90),
        p99_secs=percentile(latencies_secs, 99),
        max_secs=max(latencies_secs),
    )


def rate(items: float, elapsed_secs: float) -> float:
    """Items per second; 0 for an empty window."""
    return items / elapsed_secs if elapsed_secs > 0 else 0.0


def scaling_efficiency(aggregate_n: float, single: float, n: int) -> float | None:
    """aggregate(N) / (N × single), a fraction; None when the single-instance rate is unknown or zero."""
    if n < 1:
        raise ValueError(f"concurrency {n} must be 1 or more")
    if single <= 0 or not math.isfinite(single):
        return None
    return aggregate_n / (n * single)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fairness(rates: Sequence[float]) -> float | None:
    """Jain's fairness index of per-instance rates: 1.0 when all are equal, 1/N when one gets everything."""
    if not rates:
        return None
    squares = sum(r * r for r in rates)
    if squares <= 0:
        return None
    return sum(rates) ** 2 / (len(rates) * squares)
