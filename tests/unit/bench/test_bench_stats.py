"""Statistics of colo bench: percentiles, efficiency, ratios (pure)."""

from __future__ import annotations

import math

import pytest

from colo.bench import stats


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile(values, 50) == pytest.approx(2.5)
    assert stats.percentile(values, 99) == pytest.approx(3.97)
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile(values, 101)


def test_summarize_latencies() -> None:
    lat = [0.001 * i for i in range(1, 101)]  # 1..100 ms
    s = stats.summarize_latencies(lat)
    assert s.count == 100
    assert s.p50_secs == pytest.approx(0.0505)
    assert s.p99_secs == pytest.approx(0.09901)
    assert s.max_secs == pytest.approx(0.1)
    assert s.mean_secs == pytest.approx(0.0505)
    empty = stats.summarize_latencies([])
    assert empty.count == 0 and empty.to_dict()["p50_secs"] is None


def test_latency_dict_round_trip() -> None:
    s = stats.summarize_latencies([0.1, 0.2, 0.4])
    assert stats.latency_from_dict(s.to_dict()) == s
    back = stats.latency_from_dict(stats.EMPTY_LATENCY.to_dict())
    assert back.count == 0 and math.isnan(back.p99_secs)


def test_scaling_efficiency_matches_the_seed_table() -> None:
    # The seed guide: 33.3 tok/s alone, 66.4 aggregate at 2 (its "97 %" is not what its numbers give),
    # 99.4 at 3 (99 %).
    assert stats.scaling_efficiency(66.4, 33.3, 2) == pytest.approx(0.997, abs=1e-3)
    assert stats.scaling_efficiency(99.4, 33.3, 3) == pytest.approx(0.995, abs=1e-3)
    assert stats.scaling_efficiency(10.0, 0.0, 2) is None
    with pytest.raises(ValueError):
        stats.scaling_efficiency(1.0, 1.0, 0)


def test_ratio_rate_fairness() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(1.0, 0.0) is None
    assert stats.rate(10, 2.0) == 5.0
    assert stats.rate(10, 0.0) == 0.0
    assert stats.fairness([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert stats.fairness([9.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert stats.fairness([]) is None
    assert stats.finite(math.nan) is None and stats.finite(2.0) == 2.0
