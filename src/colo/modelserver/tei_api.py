"""Hugging Face text-embeddings-inference's routes on the built-in agent: ``/embed`` and ``/predict``.

- ``/embed`` (encoders answering embeddings): ``inputs`` a string or a list of strings; the answer is a list
  of embeddings (JSON numbers), unit length unless ``normalize`` is false — as TEI answers.
- ``/predict`` (sequence classifiers): ``inputs`` a string (answer: a list of ``{"score", "label"}``, best
  first) or a list of strings (a list of such lists: each string is one input; TEI's text *pairs* are not
  supported); scores are softmax probabilities, or logits with ``raw_scores``. Labels come from the model's
  ``id2label`` (``LABEL_i`` for random weights).

TEI takes the agent's first model that fits (it has no ``model`` field). Texts are always truncated to the
model's ``max_seq_len``. Errors are TEI's ``{"error", "error_type"}``: 422 ``Validation`` for a bad body or
one past the model's limits, 404 when no model here fits the route, 503 ``Overloaded`` (with
``Retry-After``) or ``Unhealthy``, 507 ``Backend`` (:mod:`colo.modelserver.api_errors`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from colo.modelserver.api_errors import HANDLED, Dialect, error_from, error_responses
from colo.modelserver.bodies import EmbedBody, PredictBody
from colo.modelserver.fast_bodies import FastRoutes
from colo.modelserver.http_common import infer, inline_sized, parse_secs, respond_async
from colo.modelserver.loading import LoadedModel
from colo.modelserver.route_fit import fitting_model
from colo.modelserver.runtime import AgentRuntime, InferInput

_ERRORS = error_responses(Dialect.TEI, 404, 422, 503, 507)


def labels_of(model: LoadedModel, count: int) -> list[str]:
    """The model's class labels (its config's ``id2label``), ``LABEL_i`` where it names none."""
    config = getattr(model.module, "config", None)
    names: dict[Any, Any] = dict(getattr(config, "id2label", None) or {})
    return [str(names.get(i, names.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray[Any, Any] = exp / exp.sum(axis=-1, keepdims=True)
    return result


def add_tei_routes(app: FastAPI, runtime: AgentRuntime, fast: FastRoutes | None = None) -> None:
    """Add ``/embed`` and ``/predict`` for ``runtime`` to ``app``, and to ``fast`` (the routes
    :class:`~colo.modelserver.fast_bodies.FastBodies` answers)."""
    clock, metrics = runtime.clock, runtime.metrics
    fast = fast or FastRoutes()

    async def run_raw(
        inputs: str | list[str], kind: str, route: str, request: Request
    ) -> tuple[LoadedModel, dict[str, Any]] | Response:
        """(the agent's first model answering ``kind``, its raw answer for ``inputs``), or TEI's error."""
        parsed = parse_secs(request, clock)
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        try:
            model = fitting_model(runtime, None, kind, route)
            answer = await infer(runtime, InferInput(model=model.model_id, texts=texts, raw=True, parse_secs=parsed))
        except HANDLED as exc:
            return error_from(Dialect.TEI, exc, runtime.retry_after_secs)
        return model, answer

    def small(inputs: str | list[str]) -> bool:
        return inline_sized(InferInput(texts=[inputs] if isinstance(inputs, str) else inputs))

    @fast.post(app, "/embed", EmbedBody, tags=["text-embeddings-inference"], responses=_ERRORS)
    async def embed(body: EmbedBody, request: Request) -> Response:
        out = await run_raw(body.inputs, "embeddings", "/embed", request)
        if isinstance(out, Response):
            return out
        vectors = out[1]["vectors"]
        if body.normalize:
            norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return await respond_async(vectors, metrics, clock, inline=small(body.inputs))

    @fast.post(app, "/predict", PredictBody, tags=["text-embeddings-inference"], responses=_ERRORS)
    async def predict(body: PredictBody, request: Request) -> Response:
        out = await run_raw(body.inputs, "classification", "/predict", request)
        if isinstance(out, Response):
            return out
        model, answer = out
        logits = answer["logits"]
        scores = logits if body.raw_scores else softmax(logits)
        labels = labels_of(model, scores.shape[1])
        ranked = [
            [{"score": float(row[j]), "label": labels[j]} for j in np.argsort(-row, kind="stable")]
            for row in scores
        ]
        content = ranked[0] if isinstance(body.inputs, str) else ranked
        return await respond_async(content, metrics, clock, inline=small(body.inputs))
