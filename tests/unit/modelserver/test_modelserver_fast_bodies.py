"""The inference routes' shorter way in (:mod:`colo.modelserver.fast_bodies`): a valid JSON body reaches the
route's handler in one pydantic pass; anything else goes FastAPI's way and gets FastAPI's answer, word for word.

Why a valid body gets the same answer either way: what pydantic's JSON parser accepts, ``json.loads`` accepts
with the same values, so FastAPI would have called the handler with an equal body (a property test here)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from modelserver_fakes import tiny_loader
from pydantic import BaseModel, ValidationError
from starlette.types import Message, Receive, Scope, Send

from colo.modelserver import fast_bodies
from colo.modelserver.app import create_app
from colo.modelserver.bodies import EmbedBody, EmbeddingsBody, InferBody, PredictBody
from colo.modelserver.fast_bodies import FastBodies, FastRoute, FastRoutes
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec

# --- pydantic's JSON parser accepts a subset of json.loads, with the same values --------------------------------

MODELS: list[type[BaseModel]] = [InferBody, EmbeddingsBody, EmbedBody, PredictBody]
FIELDS = ["model", "texts", "input_ids", "max_new_tokens", "input", "encoding_format", "dimensions", "inputs",
          "normalize", "raw_scores", "user"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**32), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["float", "base64", "enc", "\ud800", "\ufeff", "a\x00b", "é", "😀"]), st.text(max_size=5),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=12)
BODIES = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4)


def _encodings(doc: dict[str, Any]) -> list[bytes]:
    """``doc`` as JSON bytes several ways, some of them not JSON a strict parser takes."""
    text = json.dumps(doc, allow_nan=True)
    raw = json.dumps(doc, ensure_ascii=False, allow_nan=True)
    return [text.encode(), raw.encode("utf-8", "surrogatepass"), b"\xef\xbb\xbf" + text.encode(),
            text.encode("utf-16"), b" " + text.encode() + b"\n", text.encode() + b" x", text.encode()[:-1]]


@settings(max_examples=300, deadline=None)
@given(BODIES, st.sampled_from(MODELS))
def test_what_pydantics_json_parser_accepts_json_loads_accepts_alike(doc: dict[str, Any], model: type[BaseModel]) -> None:
    for data in _encodings(doc):
        try:
            fast = model.model_validate_json(data)
        except ValidationError:
            continue  # FastAPI's way answers it
        assert model.model_validate(json.loads(data)) == fast, data


# --- the agent's routes: both ways give the same answer ---------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    rt = AgentRuntime(agent="desk", specs=[("enc", ModelSpec(batch_size=4, max_seq_len=16)),
                                           ("cls", ModelSpec(batch_size=4, max_seq_len=16))],
                      device="cpu", loader=tiny_loader({"enc": "bert", "cls": "bert-cls"}))
    rt.load()
    return TestClient(create_app(rt))


BAD = [
    b"", b"{", b"[]", b"null", b'{"texts": ["\\ud800"]}', b"\xef\xbb\xbf{}", b'{"texts": ["\xff"]}',
    b'{"input_ids": [[NaN]]}', b'{"texts": ["a"], "input_ids": [[1]]}', b'{"texts": []}', b'{"texts": ["a"]} x',
]
GOOD = {
    "/infer": [b'{"model": "enc", "texts": ["rates rise"]}', b'{"input_ids": [[5, 6.0, 7]]}'],
    "/v1/embeddings": [b'{"model": "enc", "input": [5, 6]}', b'{"model": "enc", "input": "a", "user": "u"}'],
    "/embed": [b'{"inputs": "rates rise", "normalize": false}'],
    "/predict": [b'{"inputs": ["a", "b"]}'],
}


def _answer(response: Any) -> tuple[int, Any, str | None]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("timing", None)  # the only field that differs from request to request
    return response.status_code, body, response.headers.get("retry-after")


@pytest.mark.parametrize("path", list(GOOD))
def test_both_ways_answer_alike(client: TestClient, path: str) -> None:
    for data in [*GOOD[path], *BAD]:
        fast = client.post(path, content=data, headers={"content-type": "application/json"})
        # FastAPI reads "+json" as JSON too; the shorter way takes only application/json.
        usual = client.post(path, content=data, headers={"content-type": "application/vnd.colo+json"})
        assert _answer(fast) == _answer(usual), data
    assert client.post(path, content=GOOD[path][0], headers={"content-type": "application/json"}).status_code == 200


# --- the middleware itself ----------------------------------------------------------------------------------


class Asgi:
    """Drives one ASGI app with a scripted ``receive``; records what was sent and what the app behind saw."""

    def __init__(self, routes: dict[str, FastRoute]) -> None:
        self.behind: list[list[Message]] = []  # the messages FastAPI's way received, per call

        async def usual(scope: Scope, receive: Receive, send: Send) -> None:
            seen = [await receive()]
            while seen[-1].get("more_body"):
                seen.append(await receive())
            self.behind.append(seen)
            await Response(b"usual")(scope, receive, send)

        self.app = FastBodies(usual, routes)

    def call(self, messages: list[Message], *, path: str = "/x", method: str = "POST",
             content_type: bytes = b"application/json") -> bytes:
        sent: list[Message] = []
        pending = list(messages)

        async def receive() -> Message:
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", content_type)],
                 "query_string": b""}
        asyncio.run(self.app(scope, receive, send))
        return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


class Body(BaseModel):
    n: int


async def _fast(body: Body, request: Request) -> Response:
    return Response(f"fast {body.n}".encode())


def _chunks(*parts: bytes) -> list[Message]:
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


def test_a_valid_body_reaches_the_handler_and_nothing_else_does(monkeypatch: pytest.MonkeyPatch) -> None:
    asgi = Asgi({"/x": FastRoute(Body, _fast)})
    assert asgi.call(_chunks(b'{"n":', b" 3}")) == b"fast 3" and asgi.behind == []
    assert asgi.call(_chunks(b'{"n": "x"}')) == b"usual"
    assert asgi.behind[-1] == _chunks(b'{"n": "x"}')  # the body replayed, whole
    assert asgi.call(_chunks(b'{"n": 1}'), content_type=b"text/plain") == b"usual"
    assert asgi.call(_chunks(b'{"n": 1}'), path="/y") == b"usual"
    assert asgi.call(_chunks(b'{"n": 1}'), method="PUT") == b"usual"
    assert asgi.call(_chunks(b'{"n": 1}'), content_type=b"Application/JSON; charset=utf-8") == b"fast 1"
    monkeypatch.setattr(fast_bodies, "MAX_FAST_BODY_BYTES", 4)
    assert asgi.call(_chunks(b'{"n": 1}')) == b"usual"  # one message past the bound
    assert asgi.call(_chunks(b'{"n"', b": 1", b"}")) == b"usual"  # past it while reading: the rest streams on
    assert asgi.behind[-1] == _chunks(b'{"n": 1', b"}")


def test_a_client_gone_while_sending_is_seen_by_fastapi_as_it_was() -> None:
    asgi = Asgi({"/x": FastRoute(Body, _fast)})
    gone: Message = {"type": "http.disconnect"}
    asgi.call([{"type": "http.request", "body": b'{"n"', "more_body": True}, gone])
    assert asgi.behind[-1] == [{"type": "http.request", "body": b'{"n"', "more_body": True}, gone]


def test_routes_registered_the_fast_way_are_fastapis_routes_too() -> None:
    app = FastAPI()
    fast = FastRoutes()

    @fast.post(app, "/x", Body, tags=["t"])
    async def handler(body: Body, request: Request) -> Response:
        return await _fast(body, request)

    assert fast.routes["/x"] == FastRoute(Body, handler)
    with TestClient(app) as client:  # no FastBodies here: FastAPI alone answers
        assert client.post("/x", json={"n": 2}).content == b"fast 2"
        assert client.post("/x", json={"n": "x"}).status_code == 422
    assert app.openapi()["paths"]["/x"]["post"]["tags"] == ["t"]
