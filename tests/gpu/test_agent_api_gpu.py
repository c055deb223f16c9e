"""The agent's standard routes on a real GPU, in process (no MPS): bert-tiny (the catalog's 2-layer BERT, random
weights) on cuda, float16. Proves what only CUDA runs: the one pinned host→device copy, and embeddings through
/v1/embeddings (base64 and float) equal to /infer's; the per-phase times are observed. About 20 s.

Prints::

    GPU-RESULT agent_api lone_p50_ms=<1 × 16 tokens, /v1/embeddings, 50 requests> phases_ms=<mean per phase>
"""

from __future__ import annotations

import base64
import statistics
import time
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

with warnings.catch_warnings():
    # The GPU machine's httpx comes without httpx2: starlette's test client warns once at import (harmless here;
    # pytest's filterwarnings=error would make it a collection error).
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from colo.modelserver.app import create_app
from colo.modelserver.metrics import phase_means_ms
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec

pytestmark = pytest.mark.gpu

TINY = "google/bert_uncased_L-2_H-128_A-2"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    runtime = AgentRuntime(
        agent="gpu-api", specs=[(TINY, ModelSpec(batch_size=32, max_seq_len=128))], device="cuda", dtype="float16"
    )
    runtime.load()
    try:
        yield TestClient(create_app(runtime))
    finally:
        runtime.close()
        torch.cuda.empty_cache()


def test_embeddings_on_cuda(client: TestClient) -> None:
    ids = [[101, *range(2000, 2014), 102], [101, 2000, 102]]
    ours = np.array(client.post("/infer", json={"input_ids": ids}).json()["embeddings"], dtype=np.float32)
    body = {"model": TINY, "input": ids, "encoding_format": "base64"}
    got = client.post("/v1/embeddings", json=body).json()
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in got["data"]])
    assert vectors.shape == (2, 128) and np.allclose(vectors, ours, atol=1e-3)
    floats = client.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    assert np.allclose(np.array(floats["data"][0]["embedding"]), ours[0], atol=1e-3)
    assert got["usage"]["prompt_tokens"] == 19

    lone = {"model": TINY, "input": [[101, *range(2000, 2014), 102]]}
    times: list[float] = []
    for _ in range(50):
        started = time.perf_counter()
        assert client.post("/v1/embeddings", json=lone).status_code == 200
        times.append((time.perf_counter() - started) * 1000.0)
    phases = phase_means_ms(client.get("/metrics").text)
    assert set(phases) == {"parse", "tokenize", "queue", "to_device", "forward", "to_host", "serialize"}
    print(
        f"GPU-RESULT agent_api lone_p50_ms={statistics.median(times):.2f} phases_ms="
        + ",".join(f"{k}:{v:.3f}" for k, v in phases.items())
    )
