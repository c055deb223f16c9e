"""What every route of the built-in agent shares: orjson responses, the clock of the ``parse`` and
``serialize`` phases, and inference from the event loop.

:class:`ReceivedAt` is a pure ASGI middleware (no Starlette ``BaseHTTPMiddleware``, whose task per request
costs more than it measures) that stamps each HTTP request with the runtime clock's reading as it arrives;
a route reads it back with :func:`parse_secs` — the time to read and validate the body until the route runs.
:func:`respond` serialises an answer and observes the ``serialize`` phase.

The inference routes are ``async``: :func:`infer` queues a request for the device thread and waits for its
batch on the event loop, so a lone request crosses threads twice (loop → device thread → loop) instead of
four times through a worker thread of the pool. A request larger than :func:`prepared_on_loop` allows — texts
of more than :data:`TOKENIZE_INLINE_MAX_CHARS` characters, or more than :func:`inline_sized` allows — is
checked, tokenised and queued on a thread of the runtime's prepare pool (:mod:`colo.modelserver.preparing`),
and the loop is woken once, when its batch is answered; an answer past :func:`inline_sized` is serialised on
a worker thread (:func:`respond_async`), as the plain ``def`` routes do: the loop is never held for long by
one request.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from colo.clock import Clock
from colo.modelserver.batching import answered
from colo.modelserver.metrics import AgentMetrics
from colo.modelserver.runtime import AgentRuntime, InferInput

RECEIVED_KEY = "colo_received"
# At most this many token ids, or characters of text, in a request handled on the event loop (checking it,
# serialising its answer: tens of microseconds); larger ones are prepared on the prepare pool, and their answers
# serialised on a worker thread.
INLINE_MAX_IDS = 4096
INLINE_MAX_CHARS = 16384
# Texts of more characters than this in all are tokenised on the prepare pool: a fast tokenizer spends about a
# microsecond a character with the GIL released, which the loop spends serving others meanwhile; a short text
# (a lone query) is tokenised on the loop in less than the hand-off would cost.
TOKENIZE_INLINE_MAX_CHARS = 1024


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


def inline_sized(req: InferInput) -> bool:
    """Whether ``req`` is small enough to be checked, tokenised and answered on the event loop: at most
    :data:`INLINE_MAX_IDS` ids and :data:`INLINE_MAX_CHARS` characters of text (and rows no more than ids)."""
    return (req.texts is None or _total_within(req.texts, INLINE_MAX_CHARS)) and (
        req.input_ids is None or _total_within(req.input_ids, INLINE_MAX_IDS)
    )


def prepared_on_loop(req: InferInput) -> bool:
    """Whether ``req`` is checked and tokenised on the event loop: :func:`inline_sized`, its texts (if any)
    :data:`TOKENIZE_INLINE_MAX_CHARS` characters at most in all. Any other goes to the prepare pool."""
    return inline_sized(req) and (req.texts is None or _total_within(req.texts, TOKENIZE_INLINE_MAX_CHARS))


def _total_within(items: Sequence[Sized], most: int) -> bool:
    """At most :data:`INLINE_MAX_IDS` items, their lengths adding up to at most ``most`` (counting stops past it)."""
    if len(items) > INLINE_MAX_IDS:
        return False
    total = 0
    for item in items:
        total += len(item)
        if total > most:
            return False
    return True


async def infer(runtime: AgentRuntime, req: InferInput) -> dict[str, Any]:
    """:meth:`AgentRuntime.infer` from an async route: check, tokenise and queue ``req`` (on the loop when
    :func:`prepared_on_loop`, else on the runtime's prepare pool) and wait for its batch without blocking the
    loop. Raises what ``infer`` raises."""
    if prepared_on_loop(req):
        pending = runtime.submit(req)
    else:
        prepared = runtime.submit_prepared(req)  # answered once its batch is
        await answered(prepared)
        pending = prepared.result()
    await answered(pending.future)  # at once after the pool
    return runtime.collect(pending)


async def respond_async(
    content: Any, metrics: AgentMetrics, clock: Clock, *, inline: bool, status_code: int = 200
) -> Response:
    """:func:`respond` on the loop when ``inline`` (a small answer), else on a worker thread."""
    if inline:
        return respond(content, metrics, clock, status_code)
    return await run_in_threadpool(respond, content, metrics, clock, status_code)
