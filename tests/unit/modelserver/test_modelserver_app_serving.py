"""The HTTP side of serving within the plan: 503 + Retry-After on a full queue, /metrics, /health 503 on a lost
context, and the fault route absent unless asked for."""

from __future__ import annotations

import threading
from typing import Any

from fastapi.testclient import TestClient
from modelserver_fakes import tiny_loader

from colo.modelserver.app import create_app
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec

SPECS = [("enc", ModelSpec(batch_size=4, max_seq_len=8))]


def _runtime(**kw: Any) -> AgentRuntime:
    rt = AgentRuntime(agent="critic", specs=SPECS, device="cpu", loader=tiny_loader({"enc": "bert"}), **kw)
    rt.load()
    return rt


def test_full_queue_is_503_with_retry_after() -> None:
    rt = _runtime(max_queue=1)
    release, busy = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(10)

    holder = threading.Thread(target=rt._worker.call, args=(hold,), daemon=True)
    holder.start()
    assert busy.wait(5)
    client = TestClient(create_app(rt))
    waiting = threading.Thread(target=client.post, args=("/infer",), kwargs={"json": {"texts": ["a"]}})
    waiting.start()
    while rt._worker.depth < 1:
        threading.Event().wait(0.01)
    r = client.post("/infer", json={"texts": ["b"]})
    release.set()
    waiting.join(10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"] == "queue full"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'colo_agent_errors_total{agent="critic",kind="queue_full"} 1.0' in text
    assert "colo_agent_queue_depth" in text and "colo_agent_request_latency_seconds_bucket" in text


def test_lost_context_is_503_on_health_and_infer() -> None:
    lost: list[str] = []

    def probe() -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    rt = _runtime(probe=probe, on_context_lost=lost.append)
    client = TestClient(create_app(rt))
    h = client.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "context_lost"
    assert "device-side assert" in h.json()["error"]
    r = client.post("/infer", json={"texts": ["x"]})
    assert r.status_code == 503 and r.json()["error"] == "context lost"
    assert len(lost) == 1


def test_fault_route_only_when_asked() -> None:
    rt = _runtime()
    assert TestClient(create_app(rt)).post("/debug/fault").status_code in (404, 405)
    calls: list[int] = []
    rt.inject_fault = lambda: calls.append(1)  # type: ignore[method-assign]
    assert TestClient(create_app(rt, fault_route=True)).post("/debug/fault").status_code == 202
    assert calls == [1]
