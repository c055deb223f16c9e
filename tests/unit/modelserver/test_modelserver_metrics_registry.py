"""colo.modelserver.metrics: the built-in agent's /metrics, one registry per agent."""

from __future__ import annotations

import pytest

from colo.modelserver.metrics import ERROR_KINDS, AgentMetrics, phase_means_ms, phase_totals


def test_metrics_render_per_agent_and_count_errors_by_kind() -> None:
    a, b = AgentMetrics("critic"), AgentMetrics("scout")  # two in one process never collide
    a.queue_depth.set(3)
    a.batch_rows.observe(8)
    a.requests.inc()
    a.error("queue_full")
    text = a.render().decode()
    assert 'colo_agent_queue_depth{agent="critic"} 3.0' in text
    assert 'colo_agent_batch_rows_count{agent="critic"} 1.0' in text
    assert 'colo_agent_requests_total{agent="critic"} 1.0' in text
    assert 'colo_agent_errors_total{agent="critic",kind="queue_full"} 1.0' in text
    assert 'agent="critic"' not in b.render().decode()
    assert set(ERROR_KINDS) >= {"bad_request", "alloc_failed"}
    with pytest.raises(KeyError):
        a.error("bogus")


def test_phase_means_between_two_readings() -> None:
    m = AgentMetrics("desk")
    m.phase("parse", 0.004)
    m.phase("forward", 0.010)
    before = m.render().decode()
    m.phase("parse", 0.001)
    m.phase("parse", 0.003)
    after = m.render().decode()
    assert phase_totals(after)["parse"] == pytest.approx((0.008, 3.0))
    assert phase_means_ms(after) == pytest.approx({"parse": 8.0 / 3, "forward": 10.0})
    # Since the first reading: only the two later requests; forward saw none of them, so it is left out.
    assert phase_means_ms(after, since=before) == pytest.approx({"parse": 2.0})
