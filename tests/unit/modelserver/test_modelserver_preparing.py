"""Requests tokenised off the event loop (issue 22): the prepare pool, the runtime's use of it, and the routes'
answers when a request prepared there fails — the same ids and the same error shapes as on the loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from modelserver_fakes import tiny_loader

from colo.modelserver.app import create_app
from colo.modelserver.batching import QueueFull
from colo.modelserver.http_common import TOKENIZE_INLINE_MAX_CHARS, prepared_on_loop
from colo.modelserver.preparing import MAX_DEFAULT_THREADS, MIN_DEFAULT_THREADS, PreparePool, default_threads
from colo.modelserver.runtime import AgentRuntime, InferInput, RequestError
from colo.spec.config import ModelSpec


def _alive(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def _until_gone(prefix: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while _alive(prefix) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _alive(prefix)


# --- the pool ---------------------------------------------------------------------------------------------------


def test_default_threads_are_half_the_cores_within_bounds() -> None:
    assert [default_threads(c) for c in (1, 2, 4, 6, 8, 64)] == [2, 2, 2, 3, 4, 4]
    assert MIN_DEFAULT_THREADS <= default_threads() <= MAX_DEFAULT_THREADS
    with pytest.raises(ValueError, match="at least 1"):
        PreparePool(0)


def test_work_runs_on_the_pools_named_threads_and_errors_stay_in_the_future() -> None:
    pool = PreparePool(2, name="colo-test-prep")
    try:
        assert pool.threads == 2
        assert pool.submit(lambda a, b: (threading.current_thread().name, a + b), 2, 3).result(5)[1] == 5
        assert pool.submit(threading.current_thread).result(5).name.startswith("colo-test-prep")

        def refuse() -> None:
            raise RequestError("too long")

        failed = pool.submit(refuse)
        with pytest.raises(RequestError, match="too long"):
            failed.result(5)
    finally:
        pool.close()


def test_a_closed_pool_refuses_work_finishes_what_it_took_and_its_threads_end() -> None:
    pool = PreparePool(1, name="colo-test-closing")
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "done"

    running = pool.submit(slow)
    queued = pool.submit(lambda: "queued")
    assert started.wait(5)
    pool.close()
    with pytest.raises(QueueFull, match="stopping"):
        pool.submit(lambda: "late")
    release.set()
    assert running.result(5) == "done" and queued.result(5) == "queued"
    assert _until_gone("colo-test-closing") == []


# --- the runtime ------------------------------------------------------------------------------------------------

SPECS = [("enc", ModelSpec(batch_size=4, max_seq_len=16))]
LONG = "rates rise again as markets fall " * (TOKENIZE_INLINE_MAX_CHARS // 32 + 1)  # past the loop's bound


@pytest.fixture
def runtime() -> Any:
    rt = AgentRuntime(agent="prep", specs=SPECS, device="cpu", loader=tiny_loader({"enc": "bert"}, words=True),
                      prepare_threads=2)
    rt.load()
    yield rt
    rt.close()


def test_long_texts_are_prepared_off_the_loop_short_ones_and_ids_on_it() -> None:
    assert not prepared_on_loop(InferInput(texts=[LONG]))
    assert not prepared_on_loop(InferInput(texts=["a" * (TOKENIZE_INLINE_MAX_CHARS // 2 + 1)] * 2))
    assert prepared_on_loop(InferInput(texts=["a" * TOKENIZE_INLINE_MAX_CHARS]))
    assert prepared_on_loop(InferInput(input_ids=[[1] * 64] * 8))


def test_a_request_prepared_on_the_pool_gets_what_it_gets_on_the_loop(runtime: AgentRuntime) -> None:
    texts = ["w2 w3 w4", "w5 " * 40, "unknown words here", ""]
    req = InferInput(model="enc", texts=texts)
    prepared = runtime.submit_prepared(req).result(5)
    inline = runtime.submit(req)
    assert prepared.rows == inline.rows and prepared.truncated and inline.truncated
    assert prepared.rows[0] == [2, 3, 4] and len(prepared.rows[1]) == 16
    assert runtime.collect(prepared)["embeddings"] == runtime.collect(inline)["embeddings"]


def test_the_prepared_future_is_answered_with_the_batch_not_before(runtime: AgentRuntime) -> None:
    busy, release = threading.Event(), threading.Event()
    blocker = threading.Thread(target=runtime._worker.call, args=(lambda: (busy.set(), release.wait(5)),))
    blocker.start()
    assert busy.wait(5)  # the device thread is held
    done = runtime.submit_prepared(InferInput(model="enc", texts=[LONG]))
    deadline = time.monotonic() + 5
    while runtime._worker.depth == 0 and time.monotonic() < deadline:  # tokenised and queued by the pool
        time.sleep(0.005)
    assert runtime._worker.depth == 1 and not done.done()  # the loop is not woken for that
    release.set()
    pending = done.result(5)
    assert pending.future.done() and runtime.collect(pending)["device_batch"] == {"requests": 1, "rows": 1}
    blocker.join(5)


def test_many_requests_prepared_at_once_each_get_their_own_ids(runtime: AgentRuntime) -> None:
    reqs = [InferInput(model="enc", texts=[f"w{2 + i % 90} w{3 + i % 90}", f"w{10 + i % 80}"]) for i in range(40)]
    futures = [runtime.submit_prepared(r) for r in reqs]
    for i, future in enumerate(futures):
        pending = future.result(10)
        assert pending.rows == [[2 + i % 90, 3 + i % 90], [10 + i % 80]]
        assert runtime.collect(pending)["batch_size"] == 2


def test_a_refused_request_fails_in_its_future_and_is_counted(runtime: AgentRuntime) -> None:
    too_many = runtime.submit_prepared(InferInput(model="enc", texts=[LONG] * 5))
    with pytest.raises(RequestError, match="batch of 5 is larger"):
        too_many.result(5)
    unknown = runtime.submit_prepared(InferInput(model="nope", texts=[LONG]))
    with pytest.raises(RequestError, match="not served here"):
        unknown.result(5)
    assert b'colo_agent_errors_total{agent="prep",kind="bad_request"} 2.0' in runtime.metrics_text()


def test_close_shuts_the_prepare_pool(runtime: AgentRuntime) -> None:
    runtime.collect(runtime.submit_prepared(InferInput(model="enc", texts=[LONG])).result(5))
    assert _alive("colo-agent-prep-prepare")
    runtime.close()
    with pytest.raises(QueueFull, match="stopping"):
        runtime.submit_prepared(InferInput(model="enc", texts=[LONG]))
    assert b'colo_agent_errors_total{agent="prep",kind="queue_full"} 1.0' in runtime.metrics_text()
    assert _until_gone("colo-agent-prep-prepare") == []


# --- the routes -------------------------------------------------------------------------------------------------

TOO_MANY = [LONG] * 5  # batch_size is 4: refused while being prepared, on the pool
ROUTES = [
    ("/infer", {"model": "enc", "texts": TOO_MANY}, 422, {"error": "bad request"}),
    ("/v1/embeddings", {"model": "enc", "input": TOO_MANY}, 400, {"error": {"type": "invalid_request_error"}}),
    ("/embed", {"inputs": TOO_MANY}, 422, {"error_type": "Validation"}),
]


@pytest.mark.parametrize(("path", "body", "status", "shape"), ROUTES, ids=[r[0] for r in ROUTES])
def test_a_request_refused_on_the_pool_answers_in_its_routes_error_shape(
    runtime: AgentRuntime, path: str, body: dict[str, Any], status: int, shape: dict[str, Any]
) -> None:
    with TestClient(create_app(runtime)) as client:
        answer = client.post(path, json=body)
        assert answer.status_code == status, answer.text
        doc = answer.json()
        for key, value in shape.items():
            assert doc[key] == value if not isinstance(value, dict) else value.items() <= doc[key].items()
        assert "batch of 5 is larger" in answer.text and "rates rise" not in answer.text  # never the input
        assert client.post(path, json={**body, **{k: [LONG] for k in body if k != "model"}}).status_code == 200


def test_a_stopping_agent_answers_503_with_retry_after_for_a_request_it_would_prepare(runtime: AgentRuntime) -> None:
    with TestClient(create_app(runtime)) as client:
        runtime.close()
        answer = client.post("/v1/embeddings", json={"model": "enc", "input": [LONG]})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["type"] == "server_error" and "stopping" in answer.json()["error"]["message"]
