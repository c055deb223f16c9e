"""``create_app(source, token=...)``: the FastAPI app ``colo up`` and ``colo serve`` run.

Routes (OpenAPI at ``/docs``): ``GET /mps/allocation``, ``GET /gpu/info``, ``GET /agents``,
``GET /agents/{name}``, ``POST /agents/{name}/start|stop|restart``, ``POST /apply``, ``GET /events``,
``GET /healthz``, ``GET /metrics``.

Errors are JSON ``{"error": "..."}`` (plus ``field``/``line`` for config errors): 401 bad token, 404 unknown
agent, 409 an action not possible now or another apply running, 413 body too large, 422 invalid input or a
plan that does not fit, 503 GPU/MPS unreadable. The token never appears in a response.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from colo import __version__
from colo.api.context import ApiContext, ApiOptions, ctx_of
from colo.api.routes import agents, apply, events, reads
from colo.api.source import ApiSource
from colo.errors import (
    ColoError,
    ConfigError,
    DoesNotFitError,
    GpuError,
    MpsError,
    PlanError,
    SupervisorError,
    UsageError,
)


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


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced (errors never echo the token)."""
    return text.replace(secret, "<redacted>") if secret else text


def error_status(err: ColoError) -> int:
    """The HTTP status for a colo error."""
    if isinstance(err, ConfigError | PlanError):
        return 422  # DoesNotFitError is a PlanError: invalid for this fleet, nothing changed
    if isinstance(err, UsageError):
        return 400
    if isinstance(err, SupervisorError):
        return 409
    if isinstance(err, GpuError | MpsError):
        return 503
    return 500


def error_body(err: ColoError, token: str) -> dict[str, Any]:
    """``{"error": ...}`` plus ``field``/``line`` (config) or ``agents`` (does not fit)."""
    body: dict[str, Any] = {"error": redact(str(err), token)}
    if isinstance(err, ConfigError):
        body.update(field=err.field, line=err.line, source=err.source, message=redact(err.detail, token))
        body["hint"] = redact(err.hint, token) if err.hint else None
    if isinstance(err, DoesNotFitError):
        body["agents"] = list(err.agents)
    return body


def create_app(
    source: ApiSource,
    *,
    token: str,
    open_reads: bool = True,
    options: ApiOptions | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The colo API over ``source``. ``token`` guards mutations (and reads when ``open_reads`` is False).

    ``options`` tunes caches and limits; ``clock`` (monotonic seconds) is injected by tests.
    Raises ValueError for an empty token.
    """
    if not token:
        raise ValueError("the API token must not be empty")
    opts = options or ApiOptions()
    app = FastAPI(
        title="colo",
        version=__version__,
        description="The colo orchestrator: plan, GPUs and MPS daemons, agents, events, metrics.",
    )
    app.state.ctx = ApiContext(source=source, token=token, open_reads=open_reads, options=opts, clock=clock)
    app.add_middleware(BodyLimit, max_bytes=opts.max_body_bytes)

    @app.exception_handler(ColoError)
    async def _colo_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, ColoError)
        return JSONResponse(error_body(err, ctx_of(request).token), status_code=error_status(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        body = err.detail if isinstance(err.detail, dict) else {"error": str(err.detail)}
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    for module in (reads, agents, apply, events):
        app.include_router(module.router)
    return app
