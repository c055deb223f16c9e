"""What every route of the built-in agent shares: orjson responses, and the clock of the ``parse`` and
``serialize`` phases.

:class:`ReceivedAt` is a pure ASGI middleware (no Starlette ``BaseHTTPMiddleware``, whose task per request
costs more than it measures) that stamps each HTTP request with the runtime clock's reading as it arrives;
a route reads it back with :func:`parse_secs` — the time to read and validate the body and hand the request
to the route's thread. :func:`respond` serialises an answer and observes the ``serialize`` phase.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from colo.clock import Clock
from colo.modelserver.metrics import AgentMetrics

RECEIVED_KEY = "colo_received"


class JsonBytes(Response):
    """JSON through orjson (numpy arrays serialised natively, no generic encoder pass)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ReceivedAt:
    """ASGI middleware: ``scope["state"][RECEIVED_KEY]`` = ``clock.monotonic()`` when a request arrives."""

    def __init__(self, app: ASGIApp, clock: Clock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[RECEIVED_KEY] = self.clock.monotonic()
        await self.app(scope, receive, send)


def parse_secs(request: Request, clock: Clock) -> float | None:
    """Seconds from the request's arrival to now (None when the middleware did not stamp it)."""
    received = request.scope.get("state", {}).get(RECEIVED_KEY)
    return None if received is None else max(0.0, clock.monotonic() - float(received))


def respond(content: Any, metrics: AgentMetrics, clock: Clock, status_code: int = 200) -> Response:
    """``content`` as a JSON response; the time it took to serialise is the ``serialize`` phase."""
    started = clock.monotonic()
    response = JsonBytes(content, status_code=status_code)
    metrics.phase("serialize", clock.monotonic() - started)
    return response
