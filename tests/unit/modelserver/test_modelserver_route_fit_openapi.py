"""colo.modelserver.route_fit and colo.modelserver.openapi_doc on tiny random-weight models (CPU): which model
answers a route (by what it answered at warm-up), the 404 that names what fits instead, and the agent's OpenAPI
document — static while loading, then only the routes some model answers, with the models' limits, cached."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from modelserver_fakes import tiny_loader

from colo.modelserver.api_errors import RouteMismatch
from colo.modelserver.app import create_app
from colo.modelserver.openapi_doc import agent_openapi, tighten
from colo.modelserver.route_fit import ROUTE_KINDS, fitting_model, fitting_routes
from colo.modelserver.runtime import AgentRuntime, NotReady, UnknownModel
from colo.spec.config import ModelSpec

KINDS = {"enc": "bert", "cls": "bert-cls", "gen": "gpt2"}


def _runtime(*names: str, seq: int = 16) -> AgentRuntime:
    specs = [(n, ModelSpec(batch_size=4, max_seq_len=seq, new_tokens=3 if n == "gen" else 0,
                           task="generator" if n == "gen" else "encoder")) for n in names]
    return AgentRuntime(agent="desk", specs=specs, device="cpu", loader=tiny_loader({n: KINDS[n] for n in names}))


@pytest.fixture(scope="module")
def mixed() -> Iterator[AgentRuntime]:
    rt = _runtime("enc", "cls", "gen")
    rt.load()
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def encoders() -> Iterator[AgentRuntime]:
    rt = _runtime("enc", "cls", seq=12)
    rt.load()
    yield rt
    rt.close()


def test_fitting_model_by_name_or_the_first_that_answers(mixed: AgentRuntime) -> None:
    assert fitting_model(mixed, None, "embeddings", "/embed").model_id == "enc"
    assert fitting_model(mixed, None, "classification", "/predict").model_id == "cls"
    assert fitting_model(mixed, None, "generation", "/v1/completions").model_id == "gen"
    assert fitting_model(mixed, "gen", "generation", "/v1/chat/completions").model_id == "gen"


def test_a_model_that_does_not_answer_the_route_is_a_route_mismatch(mixed: AgentRuntime) -> None:
    with pytest.raises(RouteMismatch) as err:
        fitting_model(mixed, "enc", "generation", "/v1/completions")
    text = str(err.value)
    assert "'enc' answers embeddings, not generation: /v1/completions does not fit it" in text
    assert "enc (embeddings), cls (classification), gen (generation)" in text and err.value.hint
    with pytest.raises(UnknownModel):
        fitting_model(mixed, "nope", "embeddings", "/v1/embeddings")


def test_no_model_of_the_kind_and_not_ready_are_told_apart(encoders: AgentRuntime) -> None:
    with pytest.raises(RouteMismatch, match="no model of agent desk answers /v1/completions"):
        fitting_model(encoders, None, "generation", "/v1/completions")
    loading = _runtime("enc")
    with pytest.raises(NotReady):  # before it looks for a model: the agent is still loading
        fitting_model(loading, None, "embeddings", "/embed")
    loading.close()


def test_fitting_routes_are_the_routes_of_the_kinds_served(mixed: AgentRuntime, encoders: AgentRuntime) -> None:
    assert fitting_routes(mixed) == set(ROUTE_KINDS)
    assert fitting_routes(encoders) == {"/v1/embeddings", "/embed", "/predict"}


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]  # type: ignore[no-any-return]


def test_while_loading_the_document_is_static_and_rebuilt(encoders: AgentRuntime) -> None:
    loading = _runtime("enc")
    app = create_app(loading)
    doc = agent_openapi(app, loading)
    assert "/v1/completions" in doc["paths"] and app.openapi_schema is None  # every route; nothing cached
    assert "enum" not in _schema(doc, "InferBody")["properties"]["model"]
    loading.close()


def test_once_ready_only_fitting_routes_with_the_models_limits_cached(encoders: AgentRuntime) -> None:
    app = create_app(encoders)
    doc = agent_openapi(app, encoders)
    assert app.openapi_schema is doc and agent_openapi(app, encoders) is doc  # cached once ready
    paths = set(doc["paths"])
    assert {"/v1/embeddings", "/embed", "/predict", "/infer"} <= paths
    assert not {"/v1/completions", "/v1/chat/completions"} & paths  # no model here generates
    infer = _schema(doc, "InferBody")["properties"]
    assert infer["model"]["enum"] == ["enc", "cls"] and "max_new_tokens" not in infer  # no generator: gone
    text = str(doc["components"]["schemas"]["EmbedBody"])
    assert "'maxItems': 4" in text  # at most batch_size texts per request


def test_tighten_bounds_rows_ids_and_new_tokens(mixed: AgentRuntime) -> None:
    doc: dict[str, Any] = {
        "components": {"schemas": {
            "InferBody": {"properties": {
                "model": {"type": "string"},
                "input_ids": {"type": "array", "maxItems": 1000,
                              "items": {"type": "array", "items": {"type": "integer"}}},
                "max_new_tokens": {"anyOf": [{"type": "integer", "maximum": 1000}, {"type": "null"}]},
            }},
            "CompletionsBody": {"properties": {"max_tokens": {"type": "integer", "maximum": 2}}},
        }}
    }
    tighten(doc, mixed)
    infer = doc["components"]["schemas"]["InferBody"]["properties"]
    rows = infer["input_ids"]
    assert rows["maxItems"] == 4  # the batch
    assert rows["items"]["maxItems"] == 16 and rows["items"]["items"]["maximum"] == 100  # seq len; vocab - 1
    assert infer["max_new_tokens"]["anyOf"][0]["maximum"] == 3  # the largest new_tokens
    assert infer["model"]["enum"] == ["enc", "cls", "gen"]
    assert doc["components"]["schemas"]["CompletionsBody"]["properties"]["max_tokens"]["maximum"] == 2  # tighter kept
