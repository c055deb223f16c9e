"""colo.modelserver.metrics: the built-in agent's /metrics, one registry per agent."""

from __future__ import annotations

import pytest

from colo.modelserver.metrics import ERROR_KINDS, AgentMetrics


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
