"""The agent's routes on bad input (a 4xx in each route's own shape, never a 500, never the input echoed),
text-embeddings-inference's /embed and /predict, the per-phase timings, and an OpenAPI document true to the
answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from modelserver_fakes import tiny_loader

from colo.modelserver.app import create_app
from colo.modelserver.bodies import MAX_TEXT_CHARS
from colo.modelserver.metrics import PHASES
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec

SPECS = [
    ("enc", ModelSpec(batch_size=4, max_seq_len=16)),
    ("cls", ModelSpec(batch_size=4, max_seq_len=16)),
]


@pytest.fixture(scope="module")
def runtime() -> Iterator[AgentRuntime]:
    rt = AgentRuntime(agent="desk", specs=SPECS, device="cpu", loader=tiny_loader({"enc": "bert", "cls": "bert-cls"}))
    rt.load()
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def client(runtime: AgentRuntime) -> TestClient:
    return TestClient(create_app(runtime), raise_server_exceptions=False)


def _post_raw(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


# Each route's bad bodies, as raw JSON text (what json.dumps cannot write: lone surrogates, NaN).
BAD: list[tuple[str, str, int]] = [
    ("/infer", '{"texts":["\\ud800"]}', 422),
    ("/infer", '{"texts":["a"],"max_new_tokens":NaN}', 422),
    ("/infer", '{"texts":["a"],"max_new_tokens":2}', 422),  # an encoder takes no max_new_tokens
    ("/infer", '{"texts":null,"input_ids":[[5]]}', 422),
    ("/infer", '{"texts":["a"', 422),
    ("/infer", '{"model":"cls","texts":["a"],"input_ids":[[5]]}', 422),
    ("/v1/embeddings", '{"model":"enc","input":"\\udfff"}', 400),
    ("/v1/embeddings", '{"model":"enc","input":[]}', 400),
    ("/v1/embeddings", '{"model":"enc","input":"a","encoding_format":"int8"}', 400),
    ("/v1/embeddings", '{"model":"enc","input":[[1e400]]}', 400),
    ("/v1/embeddings", '{"model":"enc","input":[[5, 6000]]}', 400),  # past the vocabulary
    ("/v1/embeddings", '{"model":"enc","input":"a","dimensions":3}', 400),
    ("/v1/embeddings", '{"input":"a"}', 400),
    ("/v1/completions", '{"model":"enc","prompt":"a","stream":true}', 400),
    ("/v1/chat/completions", '{"model":"enc","messages":[{"role":"wizard","content":"a"}]}', 400),
    ("/embed", '{"inputs":["\\ud800x"]}', 422),
    ("/embed", '{"inputs":"a","normalize":"yes"}', 422),
    ("/predict", '{"inputs":5}', 422),
    ("/predict", '{"inputs":["a","b","c","d","e"]}', 422),  # batch_size is 4
]


def _shape_ok(path: str, body: dict[str, Any]) -> bool:
    if path.startswith("/v1/"):
        err = body.get("error")
        return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
    if path in ("/embed", "/predict"):
        return set(body) == {"error", "error_type"} and isinstance(body["error"], str)
    return set(body) == {"error", "detail"}


@pytest.mark.parametrize(("path", "text", "status"), BAD)
def test_bad_input_is_a_4xx_in_the_route_shape(client: TestClient, path: str, text: str, status: int) -> None:
    r = _post_raw(client, path, text)
    assert r.status_code == status, r.text
    body = r.json()
    assert _shape_ok(path, body), body
    assert len(r.content) < 1000


def test_a_megabyte_text_is_refused_in_a_short_answer(client: TestClient) -> None:
    r = client.post("/infer", json={"texts": ["x" * (MAX_TEXT_CHARS + 1)]})
    assert r.status_code == 422 and len(r.content) < 600
    assert "texts.0" in r.json()["detail"] and "xxxx" not in r.text
    ok = client.post("/embed", json={"inputs": "word " * 200_000})  # a megabyte within bounds: truncated, served
    assert ok.status_code == 200 and len(ok.json()) == 1


def test_routes_that_do_not_fit_the_model_are_404(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "enc", "messages": [{"role": "user", "content": "a"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_supported"
    r = client.post("/v1/embeddings", json={"model": "cls", "input": "a"})
    assert r.status_code == 404 and "classification" in r.json()["error"]["message"]


def test_tei_embed_and_predict(client: TestClient) -> None:
    vectors = np.array(client.post("/embed", json={"inputs": ["breaking news", "weather"]}).json())
    assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = np.array(client.post("/embed", json={"inputs": "weather", "normalize": False}).json())
    ours = client.post("/infer", json={"model": "enc", "texts": ["weather"]}).json()["embeddings"]
    assert np.allclose(raw, np.array(ours), atol=1e-5)
    one = client.post("/predict", json={"inputs": "good news"}).json()
    assert [p["label"] for p in one] != [] and {p["label"] for p in one} == {"LABEL_0", "LABEL_1", "LABEL_2"}
    scores = [p["score"] for p in one]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    many = client.post("/predict", json={"inputs": ["good news", "bad news"], "raw_scores": True}).json()
    assert len(many) == 2 and all(len(row) == 3 for row in many)
    best = client.post("/infer", json={"model": "cls", "texts": ["bad news"]}).json()["predictions"][0]
    assert many[1][0]["label"] == f"LABEL_{best}"


def test_phases_are_timed(client: TestClient) -> None:
    assert client.post("/v1/embeddings", json={"model": "enc", "input": "a b c"}).status_code == 200
    text = client.get("/metrics").text
    for phase in PHASES:
        line = next(ln for ln in text.splitlines() if ln.startswith(f'colo_agent_phase_seconds_count{{agent="desk",phase="{phase}"}}'))
        assert float(line.split()[-1]) >= 1, phase


def test_openapi_matches_the_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    # Only the standard routes the models answer: an embedder and a classifier, no generator.
    assert {"/v1/embeddings", "/embed", "/predict", "/v1/models"} <= set(paths)
    assert "/v1/completions" not in paths and "/v1/chat/completions" not in paths
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    infer = paths["/infer"]["post"]["responses"]
    assert infer["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ColoErrorDoc")
    assert "Retry-After" in infer["503"]["headers"]
    schemas = doc["components"]["schemas"]
    body = schemas["InferBody"]
    assert body["oneOf"] == [{"required": ["texts"]}, {"required": ["input_ids"]}]
    assert "max_new_tokens" not in body["properties"]  # no generator here
    assert body["properties"]["model"]["enum"] == ["enc", "cls"]
    assert body["properties"]["texts"]["maxItems"] == 4
    row = body["properties"]["input_ids"]["items"]
    assert row["maxItems"] == 16 and row["items"]["maximum"] == 100
    emb = paths["/v1/embeddings"]["post"]["responses"]
    assert emb["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorDoc")
    assert json.dumps(schemas["EmbeddingsBody"]).count('"maxItems": 4') >= 2
