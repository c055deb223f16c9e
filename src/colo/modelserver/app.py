"""The built-in agent's HTTP API (FastAPI): colo's own routes, OpenAI's and text-embeddings-inference's.

colo's routes:

- ``GET /health``: 200 with the runtime's health once every model is loaded and warmed up AND the CUDA context
  answers a tiny round trip; 503 with the same body otherwise (``status`` ``loading``, ``failed`` or
  ``context_lost``, and ``error`` saying why).
- ``POST /infer``: body ``{"model": id?, "texts": [...]}`` or ``{"model": id?, "input_ids": [[...]]}``, plus
  ``max_new_tokens`` for generators (refused for encoders). 200 with outputs and timings; 422 for a bad body
  or one beyond the model's worst case (batch_size, max_seq_len, new_tokens); 503 while loading, when the
  context is lost, or with ``Retry-After`` when the request queue is full; 507 when the batch could not
  allocate device memory (CUDA out of memory, cuBLAS/cuDNN allocation failure; the agent stays up).
- ``GET /metrics``: Prometheus text (queue depth, batch sizes, latency, per-phase time, errors by kind).
- ``POST /debug/fault``: only when the app was created with ``fault_route=True`` (the hidden
  ``--enable-fault-route`` flag, never passed by colo): breaks the CUDA context with a device-side assert.

The standard routes: :mod:`colo.modelserver.openai_api` (``/v1/models``, ``/v1/embeddings``,
``/v1/completions``, ``/v1/chat/completions``) and :mod:`colo.modelserver.tei_api` (``/embed``, ``/predict``).
Every error is in its route's own shape, never echoing the input (:mod:`colo.modelserver.api_errors`); the
OpenAPI document carries the loaded models' limits (:mod:`colo.modelserver.openapi_doc`). Answers are
serialised by orjson.

A valid JSON body of an inference route reaches its handler through :mod:`colo.modelserver.fast_bodies`
(one pydantic pass over the raw bytes); any other goes FastAPI's way, so errors are FastAPI's as before.
The inference routes (``/infer`` and the standard encoder routes) are ``async``: a small request is checked,
tokenised and queued on the event loop, which then waits for its batch without blocking
(:func:`colo.modelserver.http_common.infer`); a large one — long texts above all — is checked, tokenised and
queued on a thread of the runtime's prepare pool (:mod:`colo.modelserver.preparing`), and the loop is woken
when its batch is answered. The other routes are plain ``def`` (FastAPI's thread pool: ``/health`` may wait on
the CUDA probe). The device work runs on the runtime's one device thread either way, so a batch never blocks
``/health``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from colo.modelserver.api_errors import (
    HANDLED,
    Dialect,
    error_from,
    error_responses,
    http_error_response,
    validation_response,
)
from colo.modelserver.bodies import MAX_IDS_PER_ROW, MAX_ITEMS, MAX_TEXT_CHARS, InferBody
from colo.modelserver.fast_bodies import FastBodies, FastRoutes
from colo.modelserver.http_common import JsonBytes, ReceivedAt, inline_sized, parse_secs, respond_async
from colo.modelserver.http_common import infer as infer_on_loop
from colo.modelserver.openai_api import add_openai_routes
from colo.modelserver.openapi_doc import agent_openapi
from colo.modelserver.runtime import AgentRuntime, InferInput
from colo.modelserver.tei_api import add_tei_routes

__all__ = ["MAX_IDS_PER_ROW", "MAX_ITEMS", "MAX_TEXT_CHARS", "InferBody", "create_app"]

_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "loading, failed, unresponsive or context lost (the same body as 200)"}
}


def create_app(runtime: AgentRuntime, *, fault_route: bool = False) -> FastAPI:
    """The FastAPI app serving ``runtime``; ``fault_route`` adds ``POST /debug/fault`` (GPU tests only)."""
    app = FastAPI(
        title=f"colo agent {runtime.agent}",
        description="colo's built-in model agent: /health, /infer, /metrics; OpenAI's /v1/embeddings, "
        "/v1/completions, /v1/chat/completions, /v1/models; text-embeddings-inference's /embed, /predict.",
        version="1",
        # FastAPI's own OpenTelemetry hooks record nothing here (the agent configures no provider) but ask the
        # OpenTelemetry API whether to, on every request: microseconds a lone request need not spend.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    clock, metrics = runtime.clock, runtime.metrics
    fast = FastRoutes()
    app.add_middleware(FastBodies, routes=fast.routes)
    app.add_middleware(ReceivedAt, clock=clock)  # added last, so outermost: it stamps every request first
    app.add_exception_handler(RequestValidationError, validation_response)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_response)  # type: ignore[arg-type]
    app.openapi = lambda: agent_openapi(app, runtime)  # type: ignore[method-assign]

    @app.get("/health", responses=_HEALTH_RESPONSES)
    def health() -> Response:
        body = runtime.health()
        return JsonBytes(body, status_code=200 if body["status"] == "ready" else 503)

    @fast.post(app, "/infer", InferBody, responses=error_responses(Dialect.COLO, 422, 503, 507))
    async def infer(body: InferBody, request: Request) -> Response:
        req = InferInput(
            model=body.model,
            texts=body.texts,
            input_ids=body.input_ids,
            max_new_tokens=body.max_new_tokens,
            parse_secs=parse_secs(request, clock),
        )
        try:
            answer = await infer_on_loop(runtime, req)
        except HANDLED as exc:
            return error_from(Dialect.COLO, exc, runtime.retry_after_secs)
        return await respond_async(answer, metrics, clock, inline=inline_sized(req))

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}},
    )
    def metrics_text() -> Response:
        return Response(content=runtime.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    add_openai_routes(app, runtime, fast)
    add_tei_routes(app, runtime, fast)

    if fault_route:

        @app.post("/debug/fault")
        def fault() -> Response:
            runtime.inject_fault()
            return JsonBytes({"fault": "device-side assert launched"}, status_code=202)

    return app
