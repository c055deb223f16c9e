"""The built-in agent's HTTP API (FastAPI): ``GET /health``, ``POST /infer``, ``GET /metrics``.

- ``GET /health``: 200 with the runtime's health once every model is loaded and warmed up AND the CUDA context
  answers a tiny round trip; 503 with the same body otherwise (``status`` ``loading``, ``failed`` or
  ``context_lost``, and ``error`` saying why).
- ``POST /infer``: body ``{"model": id?, "texts": [...]}`` or ``{"model": id?, "input_ids": [[...]]}``, plus
  ``max_new_tokens`` for generators. 200 with outputs and timings; 422 for a bad body or one beyond the
  model's worst case (batch_size, max_seq_len, new_tokens); 503 while loading, when the context is lost, or
  with ``Retry-After`` when the request queue is full; 507 when the batch could not allocate device memory
  (CUDA out of memory, cuBLAS/cuDNN allocation failure; the agent stays up).
- ``GET /metrics``: Prometheus text (queue depth, batch sizes, latency, errors by kind).
- ``POST /debug/fault``: only when the app was created with ``fault_route=True`` (the hidden
  ``--enable-fault-route`` flag, never passed by colo): breaks the CUDA context with a device-side assert.

The route functions are plain ``def``: FastAPI runs them in its thread pool; they only check and queue, the
device work runs on the runtime's one device thread, so a batch never blocks ``/health``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, model_validator

from colo.modelserver.batching import QueueFull
from colo.modelserver.runtime import (
    AgentRuntime,
    ContextLost,
    DeviceOutOfMemory,
    InferInput,
    NotReady,
    RequestError,
)

# Hard bounds on any body, before the per-model worst case is checked (keeps a request's size sane).
MAX_ITEMS = 4096
MAX_TEXT_CHARS = 1_000_000
MAX_IDS_PER_ROW = 1_048_576


class InferBody(BaseModel):
    """``POST /infer`` body: one batch for one model."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=512, description="Model id; default: the agent's first model.")
    texts: (
        Annotated[
            list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]], Field(min_length=1, max_length=MAX_ITEMS)
        ]
        | None
    ) = None
    input_ids: (
        Annotated[
            list[
                Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_IDS_PER_ROW)]
            ],
            Field(min_length=1, max_length=MAX_ITEMS),
        ]
        | None
    ) = None
    max_new_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Generators: tokens to generate."
    )

    @model_validator(mode="after")
    def _one_input(self) -> InferBody:
        if (self.texts is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'texts' or 'input_ids'")
        return self


def _error(status: int, kind: str, exc: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": kind, "detail": str(exc)}, headers=headers)


def create_app(runtime: AgentRuntime, *, fault_route: bool = False) -> FastAPI:
    """The FastAPI app serving ``runtime``; ``fault_route`` adds ``POST /debug/fault`` (GPU tests only)."""
    app = FastAPI(
        title=f"colo agent {runtime.agent}",
        description="colo's built-in model agent: /health and /infer.",
        version="1",
    )

    @app.get("/health")
    def health() -> JSONResponse:
        body = runtime.health()
        return JSONResponse(status_code=200 if body["status"] == "ready" else 503, content=body)

    @app.post("/infer", response_model=None)
    def infer(body: InferBody) -> JSONResponse | dict[str, Any]:
        req = InferInput(
            model=body.model, texts=body.texts, input_ids=body.input_ids, max_new_tokens=body.max_new_tokens
        )
        try:
            return runtime.infer(req)
        except RequestError as exc:
            return _error(422, "bad request", exc)
        except NotReady as exc:
            return _error(503, "not ready", exc)
        except QueueFull as exc:
            return _error(503, "queue full", exc, {"Retry-After": str(runtime.retry_after_secs)})
        except ContextLost as exc:
            return _error(503, "context lost", exc)
        except DeviceOutOfMemory as exc:
            return _error(507, "out of memory", exc)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(content=runtime.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    if fault_route:

        @app.post("/debug/fault")
        def fault() -> JSONResponse:
            runtime.inject_fault()
            return JSONResponse(status_code=202, content={"fault": "device-side assert launched"})

    return app
