"""The inference routes' event-loop path (issue 22): a lone small request is checked, queued and answered on
the loop (no worker thread of the pool), a large one goes through the pool as before; concurrent requests still
merge into batches within the model's batch_size, and only the device thread ever runs the model, one batch at
a time."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from modelserver_fakes import tiny_loader, tiny_module

from colo.modelserver import http_common
from colo.modelserver.app import create_app
from colo.modelserver.batching import answered
from colo.modelserver.http_common import INLINE_MAX_CHARS, INLINE_MAX_IDS, inline_sized
from colo.modelserver.runtime import AgentRuntime, InferInput
from colo.spec.config import ModelSpec

# --- batching.answered ---------------------------------------------------------------------------------------


def test_answered_wakes_the_loop_when_another_thread_answers() -> None:
    future: Future[int] = Future()

    async def wait() -> int:
        threading.Timer(0.02, future.set_result, args=(7,)).start()
        await answered(future)
        return future.result(timeout=0)

    assert asyncio.run(wait()) == 7


def test_answered_returns_at_once_for_an_answered_future_and_leaves_errors_in_it() -> None:
    future: Future[int] = Future()
    future.set_exception(ValueError("batch failed"))
    asyncio.run(answered(future))
    with pytest.raises(ValueError, match="batch failed"):
        future.result(timeout=0)


def test_a_cancelled_waiter_leaves_the_job_future_to_the_device_thread() -> None:
    future: Future[int] = Future()

    async def cancel_then_answer() -> None:
        task = asyncio.ensure_future(answered(future))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The device thread answers later, as it always does: no InvalidStateError there.
        answering = threading.Thread(target=future.set_result, args=(3,))
        answering.start()
        answering.join(5)
        await asyncio.sleep(0.01)  # the wake-up it scheduled finds nobody waiting, quietly

    asyncio.run(cancel_then_answer())
    assert not future.cancelled() and future.result(timeout=0) == 3


# --- what is small enough for the loop -------------------------------------------------------------------------


def test_inline_sized_bounds_ids_and_characters() -> None:
    assert inline_sized(InferInput(input_ids=[[1] * 16]))
    assert inline_sized(InferInput(input_ids=[[1] * 64] * (INLINE_MAX_IDS // 64)))
    assert not inline_sized(InferInput(input_ids=[[1] * 64] * (INLINE_MAX_IDS // 64 + 1)))
    assert inline_sized(InferInput(texts=["a" * INLINE_MAX_CHARS]))
    assert not inline_sized(InferInput(texts=["a" * (INLINE_MAX_CHARS // 2 + 1)] * 2))
    assert not inline_sized(InferInput(texts=[""] * (INLINE_MAX_IDS + 1)))


# --- the routes -------------------------------------------------------------------------------------------------

SPECS = [("enc", ModelSpec(batch_size=4, max_seq_len=16)), ("cls", ModelSpec(batch_size=4, max_seq_len=16))]


@pytest.fixture(scope="module")
def runtime() -> AgentRuntime:
    rt = AgentRuntime(agent="desk", specs=SPECS, device="cpu", loader=tiny_loader({"enc": "bert", "cls": "bert-cls"}))
    rt.load()
    return rt


LONG = "word " * (INLINE_MAX_CHARS // 5 + 10)  # past the loop's bound; the tokenizer truncates it to 16 ids
ROUTES = [
    ("/infer", {"model": "enc", "texts": ["rates rise"]}, {"model": "enc", "texts": [LONG]}),
    ("/v1/embeddings", {"model": "enc", "input": "rates rise"}, {"model": "enc", "input": LONG}),
    ("/embed", {"inputs": "rates rise"}, {"inputs": LONG}),
    ("/predict", {"inputs": "rates rise"}, {"inputs": [LONG]}),
]


@pytest.mark.parametrize(("path", "small", "large"), ROUTES, ids=[r[0] for r in ROUTES])
def test_a_small_request_stays_on_the_loop_and_a_large_one_uses_the_pools(
    runtime: AgentRuntime, monkeypatch: pytest.MonkeyPatch, path: str, small: dict[str, Any], large: dict[str, Any]
) -> None:
    pooled: list[str] = []
    submitted_on: list[str] = []
    real = http_common.run_in_threadpool
    real_submit = runtime.submit

    async def counting(fn: Any, *args: Any) -> Any:
        pooled.append(fn.__name__)
        return await real(fn, *args)

    def submit(*args: Any) -> Any:
        submitted_on.append(threading.current_thread().name)
        return real_submit(*args)

    monkeypatch.setattr(http_common, "run_in_threadpool", counting)
    monkeypatch.setattr(runtime, "submit", submit)
    with TestClient(create_app(runtime)) as client:
        answer = client.post(path, json=small)
        assert answer.status_code == 200, answer.text
        assert pooled == [] and submitted_on[0].startswith("asyncio-portal")  # the test client's event loop
        answer = client.post(path, json=large)
        assert answer.status_code == 200, answer.text
        assert pooled == ["respond"]  # serialised on a worker thread
        assert submitted_on[1].startswith("colo-agent-desk-prepare")  # checked and tokenised on the prepare pool


def test_the_loop_path_answers_as_the_runtime_does(runtime: AgentRuntime) -> None:
    with TestClient(create_app(runtime)) as client:
        body = client.post("/infer", json={"model": "enc", "input_ids": [[5, 6, 7], [8, 9]]}).json()
        bad = client.post("/infer", json={"model": "enc", "input_ids": [[5, 6, 1000]]})
    alone = runtime.infer(InferInput(model="enc", input_ids=[[5, 6, 7], [8, 9]]))
    assert np.allclose(body["embeddings"], alone["embeddings"], atol=1e-5)
    assert body["device_batch"] == {"requests": 1, "rows": 2}
    assert bad.status_code == 422 and "outside the vocabulary" in bad.json()["detail"]


class Watched(torch.nn.Module):
    """A model that records which threads ran it and how many forwards ran at once."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.threads: set[str] = set()
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def forward(self, **kwargs: Any) -> Any:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.005)  # long enough for requests to queue behind it
            return self.inner(**kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_concurrent_http_requests_merge_within_batch_size_one_batch_at_a_time() -> None:
    rt = AgentRuntime(agent="desk", specs=SPECS[:1], device="cpu", loader=tiny_loader({"enc": "bert"}),
                      batch_wait_ms=20.0)
    rt.load()
    watched = Watched(tiny_module("bert"))
    rt.models["enc"].module = watched
    app = create_app(rt)

    async def clients() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
            return list(await asyncio.gather(
                *(client.post("/infer", json={"input_ids": [[10 + i, 11, 12]]}) for i in range(16)),
                *(client.post("/v1/embeddings", json={"model": "enc", "input": [20 + i, 21]}) for i in range(8)),
            ))

    try:
        answers = asyncio.run(clients())
    finally:
        rt.close()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    batches = [a.json()["device_batch"] for a in answers[:16]]
    assert all(b["rows"] <= 4 for b in batches)
    assert max(b["requests"] for b in batches) >= 2  # concurrency was merged
    assert watched.most_at_once == 1 and watched.threads == {"colo-agent-desk-device"}
