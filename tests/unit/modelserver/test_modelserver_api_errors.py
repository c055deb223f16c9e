"""colo.modelserver.api_errors and colo.modelserver.http_common: each runtime error answered in each dialect's
shape and status (a full queue with Retry-After), long messages cut, validation problems summarised by field
without the input, bodies that cannot be read answered as bad bodies; orjson responses, the arrival stamp and
the parse/serialize clock."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from modelserver_fakes import StepClock
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from colo.modelserver.api_errors import (
    HANDLED,
    MAX_MESSAGE_CHARS,
    MAX_PROBLEMS,
    Dialect,
    RouteMismatch,
    dialect_of,
    error_body,
    error_from,
    error_responses,
    http_error_response,
    summarize,
    validation_response,
)
from colo.modelserver.batching import QueueFull
from colo.modelserver.http_common import JsonBytes, ReceivedAt, parse_secs, respond
from colo.modelserver.metrics import AgentMetrics, phase_means_ms
from colo.modelserver.runtime import ContextLost, DeviceOutOfMemory, NotReady, RequestError, UnknownModel


def _doc(response: Any) -> dict[str, Any]:
    return json.loads(bytes(response.body))  # type: ignore[no-any-return]


def test_the_dialect_is_told_by_the_path() -> None:
    assert dialect_of("/v1/embeddings") is Dialect.OPENAI and dialect_of("/v1/models") is Dialect.OPENAI
    assert dialect_of("/embed") is Dialect.TEI and dialect_of("/predict") is Dialect.TEI
    assert dialect_of("/infer") is Dialect.COLO and dialect_of("/embedding") is Dialect.COLO
    assert dialect_of("/v1") is Dialect.COLO  # only routes under /v1/


@pytest.mark.parametrize(
    ("exc", "colo", "openai", "tei", "code"),
    [
        (RouteMismatch("encoder"), 422, 404, 404, "model_not_supported"),
        (UnknownModel("no such"), 422, 404, 404, "model_not_found"),
        (RequestError("too long"), 422, 400, 422, "invalid_value"),
        (NotReady("loading"), 503, 503, 503, "not_ready"),
        (QueueFull("full"), 503, 503, 503, "queue_full"),
        (ContextLost("gone"), 503, 503, 503, "context_lost"),
        (DeviceOutOfMemory("oom"), 507, 507, 507, "out_of_memory"),
    ],
)
def test_each_runtime_error_has_one_status_per_dialect(exc: Exception, colo: int, openai: int, tei: int, code: str) -> None:
    assert isinstance(exc, HANDLED)
    got = {d: error_from(d, exc, retry_after_secs=4) for d in Dialect}
    assert [got[d].status_code for d in (Dialect.COLO, Dialect.OPENAI, Dialect.TEI)] == [colo, openai, tei]
    assert _doc(got[Dialect.OPENAI])["error"]["code"] == code
    assert _doc(got[Dialect.OPENAI])["error"]["message"] == str(exc)
    assert set(_doc(got[Dialect.COLO])) == {"error", "detail"} and _doc(got[Dialect.COLO])["detail"] == str(exc)
    assert set(_doc(got[Dialect.TEI])) == {"error", "error_type"}
    for response in got.values():
        assert (response.headers.get("retry-after") == "4") is isinstance(exc, QueueFull)


def test_error_kinds_in_each_dialect() -> None:
    full = QueueFull("full")
    assert _doc(error_from(Dialect.COLO, full, 1))["error"] == "queue full"
    assert _doc(error_from(Dialect.TEI, full, 1))["error_type"] == "Overloaded"
    assert _doc(error_from(Dialect.OPENAI, full, 1))["error"]["type"] == "server_error"
    assert _doc(error_from(Dialect.TEI, DeviceOutOfMemory("x"), 1))["error_type"] == "Backend"


def test_an_error_outside_the_table_is_raised_again() -> None:
    with pytest.raises(KeyError):
        error_from(Dialect.COLO, KeyError("bug"), 1)


def test_long_messages_are_cut_to_the_limit() -> None:
    body = error_body(Dialect.TEI, "x" * 10_000, kind="Validation")
    assert len(body["error"]) == MAX_MESSAGE_CHARS and body["error"].endswith("…")
    short = error_body(Dialect.OPENAI, "short", kind="invalid_request_error", param="input")
    assert short == {"error": {"message": "short", "type": "invalid_request_error", "param": "input", "code": None}}
    assert error_body(Dialect.COLO, "why", kind="bad request") == {"error": "bad request", "detail": "why"}


def test_summarize_names_fields_not_values_and_counts_the_rest() -> None:
    errors = [
        {"loc": ("body", "input", "list[str]", 0), "msg": "String should have at most 8 characters", "input": "SECRET"},
        {"loc": ("body", "input", "none"), "msg": "Input should be None", "type": "none_required"},
        {"loc": ("body", "model"), "msg": "Field required", "type": "missing"},
        {"loc": ("body", "model"), "msg": "Field required", "type": "missing"},  # a duplicate counts once
        {"loc": ("body", "a"), "msg": "bad"},
        {"loc": ("body", "b"), "msg": "bad"},
        {"loc": ("body", "c"), "msg": "bad"},
    ]
    text, first = summarize(errors)
    assert first == "input.0" and "SECRET" not in text and "None" not in text
    assert text.startswith("invalid request body: input.0: String should have at most 8 characters; model: Field")
    assert text.count(";") == MAX_PROBLEMS and text.endswith("; and 2 more")
    only_none, where = summarize([{"loc": ("body",), "msg": "Input should be None", "type": "none_required"}])
    assert where == "body" and "Input should be None" in only_none  # kept when it is all there is


def _request(path: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""})


def test_validation_and_unreadable_bodies_answer_in_the_routes_shape() -> None:
    exc = RequestValidationError([{"loc": ("body", "inputs"), "msg": "Field required", "type": "missing"}])
    openai = validation_response(_request("/v1/embeddings"), exc)
    assert openai.status_code == 400 and _doc(openai)["error"]["param"] == "inputs"
    tei = validation_response(_request("/embed"), exc)
    assert tei.status_code == 422 and _doc(tei)["error_type"] == "Validation"
    colo = validation_response(_request("/infer"), exc)
    assert colo.status_code == 422 and _doc(colo) == {"error": "bad request", "detail": "invalid request body: inputs: Field required"}
    unreadable = StarletteHTTPException(400, "not UTF-8")
    bad = asyncio.run(http_error_response(_request("/v1/completions"), unreadable))
    assert bad.status_code == 400 and _doc(bad)["error"]["message"] == "invalid request body: not UTF-8"
    assert asyncio.run(http_error_response(_request("/predict"), unreadable)).status_code == 422
    missing = asyncio.run(http_error_response(_request("/v1/nope"), StarletteHTTPException(404, "Not Found")))
    assert missing.status_code == 404 and _doc(missing) == {"detail": "Not Found"}  # Starlette's own answer


def test_error_responses_declare_each_status_with_the_dialects_document() -> None:
    declared = error_responses(Dialect.TEI, 404, 503)
    assert set(declared) == {404, 503} and declared[404]["model"].__name__ == "TeiErrorDoc"
    assert "Retry-After" in declared[503]["headers"] and "headers" not in declared[404]
    assert error_responses(Dialect.OPENAI, 400)[400]["model"].__name__ == "OpenAIErrorDoc"


# --- http_common ---------------------------------------------------------------------------------------------


def test_json_bytes_writes_numpy_arrays_natively() -> None:
    response = JsonBytes({"v": np.array([[1.5, 2.0]], dtype=np.float32), "n": 3})
    assert response.media_type == "application/json" and json.loads(bytes(response.body)) == {"v": [[1.5, 2.0]], "n": 3}


class _Body(BaseModel):
    text: str


def test_received_at_stamps_arrival_and_parse_secs_reads_it() -> None:
    clock = StepClock(start=100.0, step=0.25)
    app = FastAPI()

    @app.post("/echo")
    def echo(body: _Body, request: Request) -> dict[str, Any]:
        return {"parse": parse_secs(request, clock)}

    app.add_middleware(ReceivedAt, clock=clock)
    with TestClient(app) as client:
        assert client.post("/echo", json={"text": "a"}).json() == {"parse": 0.25}  # stamped, read one step later
    bare = FastAPI()

    @bare.post("/echo")
    def echo_bare(body: _Body, request: Request) -> dict[str, Any]:
        return {"parse": parse_secs(request, clock)}

    with TestClient(bare) as client:
        assert client.post("/echo", json={"text": "a"}).json() == {"parse": None}  # no middleware: no stamp


def test_respond_observes_the_serialize_phase() -> None:
    metrics = AgentMetrics("desk")
    response = respond({"ok": True}, metrics, StepClock(step=0.002), status_code=201)
    assert response.status_code == 201 and json.loads(bytes(response.body)) == {"ok": True}
    means = phase_means_ms(metrics.render().decode())
    assert means["serialize"] == pytest.approx(2.0)
