"""The runtime under concurrency and device failures: batches merged within the plan, one log line per
allocation failure, a lost context (by a request or by the probe) turning the agent away for good."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from modelserver_fakes import RaisingModule, tiny_loader

from colo.modelserver.runtime import AgentRuntime, ContextLost, DeviceOutOfMemory, InferInput
from colo.spec.config import ModelSpec

SPECS = [("enc", ModelSpec(batch_size=4, max_seq_len=8)), ("gen", ModelSpec(batch_size=2, max_seq_len=5,
                                                                             new_tokens=2, task="generator"))]
KINDS = {"enc": "bert", "gen": "gpt2"}


def _runtime(**kw: Any) -> AgentRuntime:
    rt = AgentRuntime(agent="critic", specs=SPECS, device="cpu", loader=tiny_loader(KINDS), **kw)
    rt.load()
    return rt


def _breakable_probe(error: str) -> tuple[threading.Event, Callable[[], None]]:
    """A context probe that answers until the event is set, then raises ``RuntimeError(error)``."""
    broken = threading.Event()

    def probe() -> None:
        if broken.is_set():
            raise RuntimeError(error)

    return broken, probe


def test_sixteen_clients_are_merged_within_batch_size() -> None:
    rt = _runtime(batch_wait_ms=20.0)
    alone = rt.infer(InferInput(texts=["markets rally"]))
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for _ in range(3):
                texts = ["markets rally"] if i % 2 else ["a", "longer story about rates"]
                answers.append(rt.infer(InferInput(texts=texts)))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(answers) == 48
    assert all(a["device_batch"]["rows"] <= 4 for a in answers)
    assert max(a["device_batch"]["requests"] for a in answers) >= 2  # concurrency was merged
    merged = [a for a in answers if a["batch_size"] == 1 and a["device_batch"]["requests"] > 1]
    assert merged and merged[0]["embeddings"][0] == pytest.approx(alone["embeddings"][0], abs=1e-4)
    metrics = rt.metrics_text().decode()
    assert "colo_agent_batch_rows_bucket" in metrics and "colo_agent_requests_total" in metrics
    assert rt.health()["requests"] == 49


def test_a_cublas_allocation_failure_is_507_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    rt = _runtime()
    rt.models["enc"].module = RaisingModule(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`\nmore lines"
    )
    with caplog.at_level(logging.ERROR), pytest.raises(DeviceOutOfMemory, match="CUBLAS_STATUS_ALLOC_FAILED"):
        rt.infer(InferInput(texts=["x"]))
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert "CUDA out of memory on a request to enc" in record.getMessage()
    assert rt.health()["status"] == "ready" and rt.health()["out_of_memory"] == 1
    assert 'kind="alloc_failed"} 1.0' in rt.metrics_text().decode()


def test_a_request_that_finds_the_context_lost_is_503_and_the_agent_leaves_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lost: list[str] = []
    rt = _runtime(on_context_lost=lost.append)
    rt.models["enc"].module = RaisingModule("CUDA error: an illegal memory access was encountered")
    with caplog.at_level(logging.ERROR), pytest.raises(ContextLost):
        rt.infer(InferInput(texts=["x"]))
    with pytest.raises(ContextLost):
        rt.infer(InferInput(model="gen", texts=["x"]))  # no request reaches the device again
    assert len(lost) == 1 and "illegal memory access" in lost[0]
    assert sum("CUDA context lost" in r.getMessage() for r in caplog.records) == 1
    h = rt.health()
    assert h["status"] == "context_lost" and "illegal memory access" in h["error"]


def test_health_probes_the_context() -> None:
    broken, probe = _breakable_probe("CUDA error: cudaErrorMpsRpcFailure")
    lost: list[str] = []
    rt = _runtime(probe=probe, on_context_lost=lost.append)
    assert rt.health()["status"] == "ready"
    broken.set()
    rt._watch.min_interval_secs = 0  # type: ignore[union-attr]
    h = rt.health()
    assert h["status"] == "context_lost" and "cudaErrorMpsRpcFailure" in h["error"]
    assert rt.health()["status"] == "context_lost" and len(lost) == 1
    assert h["memory_allocated_bytes"] is None  # no CUDA calls on a lost context


def test_a_slow_probe_is_unresponsive_then_lost_when_hung() -> None:
    release = threading.Event()
    lost: list[str] = []
    hang = threading.Event()

    def probe() -> None:
        if hang.is_set():
            release.wait(10)

    rt = _runtime(probe=probe, probe_timeout_secs=0.05, hang_secs=0.5, on_context_lost=lost.append)
    assert rt.health()["status"] == "ready"
    hang.set()
    rt._watch.min_interval_secs = 0  # type: ignore[union-attr]
    h = rt.health()
    assert h["status"] == "unresponsive" and "did not answer" in h["error"] and not lost
    assert rt.status == "ready"  # not sticky
    watcher = rt.watch_context(interval_secs=0.05)
    assert watcher is not None
    watcher.join(5)
    release.set()
    assert rt.status == "context_lost" and len(lost) == 1 and "unanswered for" in lost[0]


def test_no_watch_on_cpu() -> None:
    assert _runtime().watch_context() is None


def test_an_unplaced_error_is_a_lost_context_when_the_probe_fails() -> None:
    broken, probe = _breakable_probe("CUDA error: unknown error")
    lost: list[str] = []
    rt = _runtime(probe=probe, on_context_lost=lost.append)
    rt.models["enc"].module = RaisingModule("CUDA error: unknown error")
    with pytest.raises(RuntimeError, match="unknown error"):  # the context still answers: a plain error
        rt.infer(InferInput(texts=["x"]))
    broken.set()
    with pytest.raises(ContextLost):
        rt.infer(InferInput(texts=["x"]))
    assert len(lost) == 1 and rt.status == "context_lost"
