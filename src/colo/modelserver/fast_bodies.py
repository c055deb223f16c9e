"""A shorter way in for the inference routes' valid bodies; every other request takes FastAPI's way, unchanged.

FastAPI brings a body to its route through its exception middlewares, a match against every route, ``json.loads``,
validation of the decoded object and dependency solving: for a lone small request that is most of the agent's own
time outside the model. :class:`FastBodies`, an ASGI middleware, takes a ``POST`` to a path registered with
:meth:`FastRoutes.post` whose ``Content-Type`` is ``application/json`` and whose body is at most
:data:`MAX_FAST_BODY_BYTES`, validates it against the route's pydantic model in one pass
(``Model.model_validate_json``: pydantic's own parser) and calls the route's handler with it — the same function
FastAPI calls for that route.

Anything else goes on to FastAPI with the body replayed: another content type, a larger body, invalid JSON, a
body the model refuses. So every error is FastAPI's, in the same words as before, and a valid body gets the same
answer either way: what pydantic's JSON parser accepts, ``json.loads`` accepts with the same values (a lone
surrogate, a byte-order mark, bytes that are not UTF-8 are refused by pydantic's parser, so FastAPI answers them;
tests/unit/modelserver/test_modelserver_fast_bodies.py holds this). The OpenAPI document is FastAPI's, from the
same route. An exception a handler does not catch reaches Starlette's error middleware, outside this one: 500, as
before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Bodies past this go FastAPI's way (reading them is most of their cost; the shorter way gains nothing there).
MAX_FAST_BODY_BYTES = 1 << 20

B = TypeVar("B", bound=BaseModel)
Handler = Callable[[B, Request], Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    """A route's body model and its handler ``(body, request) -> Response``."""

    body: type[BaseModel]
    handler: Handler[Any]


class FastRoutes:
    """The routes :class:`FastBodies` answers, by path."""

    def __init__(self) -> None:
        self.routes: dict[str, FastRoute] = {}

    def post(self, app: FastAPI, path: str, body: type[B], **kwargs: Any) -> Callable[[Handler[B]], Handler[B]]:
        """``app.post(path, **kwargs)`` for a handler ``(body: B, request) -> Response``; valid JSON bodies
        also reach it through :class:`FastBodies`."""

        def register(handler: Handler[B]) -> Handler[B]:
            app.post(path, **kwargs)(handler)
            self.routes[path] = FastRoute(body, handler)
            return handler

        return register


class FastBodies:
    """ASGI middleware: valid JSON bodies of the ``routes`` go straight to their handler (see the module)."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, FastRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not _json_content(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: FastAPI sees what it would have seen
                read = [_body(b"".join(chunks), more=True)] if chunks else []
                await self.app(scope, _replay([*read, message], receive), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
            if size > MAX_FAST_BODY_BYTES:
                await self.app(scope, _replay([_body(b"".join(chunks), more=True)], receive), send)
                return
        body = b"".join(chunks)
        replayed = _replay([_body(body, more=False)], receive)
        if size > MAX_FAST_BODY_BYTES:
            await self.app(scope, replayed, send)
            return
        try:
            parsed = route.body.model_validate_json(body)
        except ValidationError:  # FastAPI answers it, in its own words
            await self.app(scope, replayed, send)
            return
        response = await route.handler(parsed, Request(scope, replayed))
        await response(scope, replayed, send)


def _json_content(scope: Scope) -> bool:
    """Whether the request says ``Content-Type: application/json`` (parameters such as charset aside)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _body(data: bytes, *, more: bool) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then ``receive``'s own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
