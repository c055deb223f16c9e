"""The agent's HTTP API through FastAPI's test client, on the catalog's tiny BERT with random weights (CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from modelserver_fakes import OomModule

from colo.modelserver.app import MAX_ITEMS, create_app
from colo.modelserver.loading import RANDOM_WEIGHTS, agent_models, limits_for
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec

TINY = "google/bert_uncased_L-2_H-128_A-2"


@pytest.fixture(scope="module")
def runtime() -> AgentRuntime:
    return AgentRuntime(agent="analyst", specs=[(TINY, ModelSpec(batch_size=4, max_seq_len=32))], device="cpu")


@pytest.fixture(scope="module")
def client(runtime: AgentRuntime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as c:
        assert c.get("/health").status_code == 503  # nothing loaded yet
        assert c.get("/health").json()["status"] == "loading"
        assert c.post("/infer", json={"texts": ["x"]}).status_code == 503
        runtime.load()
        yield c


def test_health_once_loaded(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["device"] == "cpu" and body["agent"] == "analyst"
    (model,) = body["models"]
    assert model["id"] == TINY and model["weights"] == RANDOM_WEIGHTS and model["tokenizer"] == "hash fallback"
    assert model["parameters"] == 4_385_920  # the exact catalog architecture: 2 layers, hidden 128
    assert (model["max_batch"], model["max_seq_len"]) == (4, 32)


def test_infer_texts_and_ids(client: TestClient) -> None:
    r = client.post("/infer", json={"texts": ["breaking news", "weather"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "embeddings" and body["embedding_shape"] == [2, 128] and len(body["embeddings"]) == 2
    again = client.post("/infer", json={"model": TINY, "texts": ["breaking news", "weather"]}).json()
    assert again["embeddings"] == body["embeddings"]  # same text, same ids, same weights
    r = client.post("/infer", json={"input_ids": [[101, 2000, 102], [101, 102]]})
    assert r.status_code == 200 and r.json()["seq_len"] == 3


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"texts": ["a"], "input_ids": [[1]]},
        {"texts": []},
        {"texts": "not a list"},
        {"input_ids": [[-1]]},
        {"input_ids": [[]]},
        {"texts": ["a"], "max_new_tokens": 0},
        {"texts": ["a"], "surprise": 1},
        {"texts": ["a"] * (MAX_ITEMS + 1)},
        {"texts": ["a"] * 5},
        {"input_ids": [list(range(1000, 1033))]},
        {"input_ids": [[40000]]},
        {"model": "gpt-5", "texts": ["a"]},
    ],
)
def test_bad_bodies_are_422(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/infer", json=body)
    assert r.status_code == 422, r.text


def test_request_oom_is_507(client: TestClient, runtime: AgentRuntime) -> None:
    model = runtime.models[TINY]
    real = model.module
    model.module = OomModule()
    try:
        r = client.post("/infer", json={"texts": ["x"]})
    finally:
        model.module = real
    assert r.status_code == 507 and "CUDA out of memory" in r.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.post("/infer", json={"texts": ["x"]}).status_code == 200


def test_newsroom_limits_follow_the_model_positions(newsroom_path: object) -> None:
    from colo.memory.build import max_positions, resolve_source
    from colo.spec import load_config

    config = load_config(str(newsroom_path))
    for agent in config.agents:
        for model_id, spec in agent_models(config, agent):
            source = resolve_source(model_id, random_weights=True)
            limits = limits_for(model_id, spec, spec.task or source.task, max_positions(source))
            assert limits.max_batch == spec.batch_size == 32
            # The newsroom's worst cases fit every architecture: nothing is cut.
            assert limits.max_seq_len == spec.max_seq_len
    with pytest.raises(Exception, match="no agent 'nobody'"):
        agent_models(config, "nobody")


def test_limits_cut_to_positions() -> None:
    spec = ModelSpec(max_seq_len=600, new_tokens=64, task="generator")
    assert limits_for("m", spec, "generator", 512).max_seq_len == 448
    assert limits_for("m", spec, "seq2seq", None).max_seq_len == 600
    assert limits_for("m", ModelSpec(max_seq_len=600), "encoder", 512).new_tokens == 0
    with pytest.raises(Exception, match="no room"):
        limits_for("m", ModelSpec(new_tokens=600), "generator", 512)


def test_health_reports_the_largest_batch_served(client: TestClient) -> None:
    """What colo's usage history reads: per model the largest batch (rows × padded length) run successfully."""
    assert client.post("/infer", json={"input_ids": [[101] * 20, [101] * 5, [101] * 7]}).status_code == 200
    assert client.post("/infer", json={"input_ids": [[101] * 4]}).status_code == 200  # smaller: kept the larger
    body = client.get("/health").json()
    largest = body["largest_batch"][TINY]
    assert largest["rows"] * largest["seq_len"] >= 3 * 20 and largest["new_tokens"] == 0
    assert isinstance(body["requests"], int) and isinstance(body["out_of_memory"], int)
