"""colo.modelserver.openai_api and colo.modelserver.tei_api mounted on a bare FastAPI app over tiny random-weight
models (CPU): OpenAI's input forms, models, embeddings (float and base64 agree), completions and chat (ids as
``<id>`` when the tokenizer cannot decode, finish reasons, usage), a route that does not fit the model as
OpenAI's 404; TEI's /embed (unit length unless asked not to) and /predict (ranked labels, softmax or raw)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from modelserver_fakes import tiny_loaded, tiny_loader

from colo.modelserver.openai_api import add_openai_routes, split_input
from colo.modelserver.runtime import AgentRuntime
from colo.modelserver.tei_api import add_tei_routes, labels_of, softmax
from colo.spec.config import ModelSpec

SPECS = [
    ("enc", ModelSpec(batch_size=4, max_seq_len=16)),
    ("cls", ModelSpec(batch_size=4, max_seq_len=16)),
    ("gen", ModelSpec(batch_size=4, max_seq_len=16, new_tokens=3, task="generator")),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    rt = AgentRuntime(agent="desk", specs=SPECS, device="cpu",
                      loader=tiny_loader({"enc": "bert", "cls": "bert-cls", "gen": "gpt2"}))
    rt.load()
    app = FastAPI()
    add_openai_routes(app, rt)
    add_tei_routes(app, rt)
    with TestClient(app) as c:
        yield c
    rt.close()


def test_split_input_takes_every_openai_form() -> None:
    assert split_input("a") == (["a"], None)
    assert split_input(["a", "b"]) == (["a", "b"], None)
    assert split_input([5, 6]) == (None, [[5, 6]])  # one token array
    assert split_input([[5], [6, 7]]) == (None, [[5], [6, 7]])
    assert split_input([]) == (None, [])


def test_models_lists_every_served_model(client: TestClient) -> None:
    doc = client.get("/v1/models").json()
    assert doc["object"] == "list" and [m["id"] for m in doc["data"]] == ["enc", "cls", "gen"]
    assert all(m["object"] == "model" and m["owned_by"] == "colo" for m in doc["data"])


def test_embeddings_float_and_base64_agree_and_count_tokens(client: TestClient) -> None:
    floats = client.post("/v1/embeddings", json={"model": "enc", "input": ["a b c", "d"]}).json()
    assert [d["index"] for d in floats["data"]] == [0, 1] and floats["model"] == "enc"
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 0
    packed = client.post("/v1/embeddings", json={"model": "enc", "input": ["a b c", "d"], "encoding_format": "base64"})
    raw = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), dtype="<f4")
    assert raw.tolist() == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    ids = client.post("/v1/embeddings", json={"model": "enc", "input": [[5, 6, 7]]}).json()
    assert ids["usage"]["prompt_tokens"] == 3 and len(ids["data"]) == 1


def test_a_route_the_model_does_not_answer_is_openais_404(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "gen", "input": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_supported"
    r = client.post("/v1/completions", json={"model": "enc", "prompt": "a"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "a"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_completions_show_ids_finish_reasons_and_usage(client: TestClient) -> None:
    doc = client.post("/v1/completions", json={"model": "gen", "prompt": ["a b", "c"], "max_tokens": 2}).json()
    assert doc["object"] == "text_completion" and doc["model"] == "gen" and doc["id"].startswith("cmpl-")
    assert [c["index"] for c in doc["choices"]] == [0, 1]
    for choice in doc["choices"]:  # the hash tokenizer cannot decode: the ids as <id> tokens
        assert choice["text"].startswith("<") and choice["text"].count("<") == 2
        assert choice["finish_reason"] == "length"  # stopped by max_tokens, not by an end token
    usage = doc["usage"]
    assert usage["completion_tokens"] == 4 and usage["total_tokens"] == usage["prompt_tokens"] + 4
    default = client.post("/v1/completions", json={"model": "gen", "prompt": "a"}).json()
    assert default["choices"][0]["text"].count("<") == 3  # default: the model's new_tokens


def test_chat_answers_as_the_assistant(client: TestClient) -> None:
    body = {"model": "gen", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_completion_tokens": 1, "max_tokens": 3}
    doc = client.post("/v1/chat/completions", json=body).json()
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-")
    (choice,) = doc["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].count("<") == 1  # max_completion_tokens wins
    assert doc["usage"]["completion_tokens"] == 1


def test_embed_is_unit_length_unless_asked_not_to(client: TestClient) -> None:
    vectors = np.array(client.post("/embed", json={"inputs": ["a b", "c"]}).json())
    assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = np.array(client.post("/embed", json={"inputs": "a b", "normalize": False}).json())
    assert raw.shape == (1, 16) and np.allclose(raw[0] / np.linalg.norm(raw[0]), vectors[0], atol=1e-5)
    assert not np.isclose(np.linalg.norm(raw[0]), 1.0)


def test_predict_ranks_labels_by_probability_or_raw_logits(client: TestClient) -> None:
    single = client.post("/predict", json={"inputs": "a b"}).json()
    assert sorted(p["label"] for p in single) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    scores = [p["score"] for p in single]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    several = client.post("/predict", json={"inputs": ["a b", "c"]}).json()
    assert len(several) == 2 and all(len(ranked) == 3 for ranked in several)  # one ranked list per input
    assert [p["score"] for p in several[0]] == pytest.approx(scores, abs=1e-4)
    raw = client.post("/predict", json={"inputs": "a b", "raw_scores": True}).json()
    logits = np.array([p["score"] for p in sorted(raw, key=lambda p: p["label"])])
    assert softmax(logits[None, :])[0].tolist() == pytest.approx(
        [p["score"] for p in sorted(single, key=lambda p: p["label"])], abs=1e-5
    )


def test_labels_come_from_id2label_and_softmax_is_stable() -> None:
    model = tiny_loaded("bert-cls")
    assert labels_of(model, 3) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    model.module.config.id2label = {0: "negative", 2: "positive"}
    assert labels_of(model, 3) == ["negative", "LABEL_1", "positive"]
    model.module.config.id2label = {"1": "neutral"}  # keys as strings, as a config.json read back has them
    assert labels_of(model, 2) == ["LABEL_0", "neutral"]
    probs = softmax(np.array([[1000.0, 1001.0], [0.0, 0.0]], dtype=np.float32))
    assert np.isfinite(probs).all() and probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probs[0, 1] > probs[0, 0] and probs[1].tolist() == pytest.approx([0.5, 0.5])
