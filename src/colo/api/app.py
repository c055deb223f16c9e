"""``create_app(source, token=...)``: the FastAPI app ``colo up`` and ``colo serve`` run.

Routes (OpenAPI at ``/docs``): ``GET /mps/allocation``, ``GET /gpu/info``, ``GET /agents``,
``GET /agents/{name}``, ``POST /agents/{name}/start|stop|restart``, ``POST /apply``, ``GET /events``,
``GET /healthz``, ``GET /metrics``.

Errors are JSON ``{"error": "..."}`` (plus ``field``/``line`` for config errors): 401 bad token, 404 unknown
agent, 409 an action not possible now or another apply running, 413 body too large, 422 invalid input or a
plan that does not fit, 503 GPU/MPS unreadable. The token never appears in a response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from colo import __version__
from colo.api.context import ApiContext, ApiOptions, ctx_of
from colo.api.docs import install_docs
from colo.api.errors import error_body, error_status, errors_in_openapi, install_error_handlers, redact
from colo.api.routes import agents, apply, events, reads
from colo.api.source import ApiSource
from colo.clock import SYSTEM_CLOCK, Clock

__all__ = ["BodyLimit", "HeadAsGet", "create_app", "error_body", "error_status", "redact"]


class BodyTooLarge(Exception):
    """A request body passed the app's limit."""


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared Content-Length or bytes actually sent)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": f"request body over {self.max_bytes} bytes; send a smaller configuration"},
            status_code=413,
        )
        await response(scope, receive, send)


def create_app(
    source: ApiSource,
    *,
    token: str,
    open_reads: bool = True,
    options: ApiOptions | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> FastAPI:
    """The colo API over ``source``. ``token`` guards mutations (and reads when ``open_reads`` is False).

    ``options`` tunes caches and limits; ``clock`` (a :class:`~colo.clock.Clock`: its monotonic seconds time the
    caches and event streams) is injected by tests. Raises ValueError for an empty token.
    """
    if not token:
        raise ValueError("the API token must not be empty")
    opts = options or ApiOptions()
    app = FastAPI(
        title="colo",
        version=__version__,
        description="The colo orchestrator: plan, GPUs and MPS daemons, agents, events, metrics.",
        docs_url=None,  # served offline by colo.api.docs
        redoc_url=None,
    )
    app.state.ctx = ApiContext(source=source, token=token, open_reads=open_reads, options=opts, clock=clock)
    app.add_middleware(BodyLimit, max_bytes=opts.max_body_bytes)

    app.add_middleware(HeadAsGet)
    install_error_handlers(app, lambda request: ctx_of(request).token)
    for module in (reads, agents, apply, events):
        app.include_router(module.router)
    install_docs(app)
    install_openapi(app)
    return app


class HeadAsGet:
    """ASGI middleware: ``HEAD`` on any GET route (``HEAD /metrics``) answers GET's status and headers, no body.

    The event stream is left out: its GET never ends.
    """

    def __init__(self, app: ASGIApp, skip_prefixes: tuple[str, ...] = ("/events",)) -> None:
        self.app = app
        self.skip_prefixes = skip_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"].startswith(self.skip_prefixes):
            await self.app(scope, receive, send)
            return
        finished = False

        async def head_send(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.body":
                if finished:
                    return
                finished = not message.get("more_body", False)
                message = {"type": "http.response.body", "body": b"", "more_body": not finished}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, head_send)


def install_openapi(app: FastAPI) -> None:
    """The OpenAPI document names its bearer-token scheme on every route that can answer 401, shows errors in
    the ``{"error": ...}`` shape, and holds colo.yaml's schema (the JSON body of ``POST /apply``)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        # POST /apply reads its body itself (YAML or JSON); its JSON form is colo.yaml's own schema.
        doc.setdefault("components", {}).setdefault("schemas", {}).update(apply.config_schemas())
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the token in <state_dir>/api-token (or $COLO_API_TOKEN)",
        }
        for methods in doc.get("paths", {}).values():
            for method, op in methods.items():
                if "401" not in (op.get("responses") or {}):
                    continue
                if method == "get":
                    op["security"] = [{"bearerAuth": []}, {}]  # reads: unless the server has open reads
                else:
                    op["security"] = [{"bearerAuth": []}]  # mutations: always
        app.openapi_schema = errors_in_openapi(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
