"""The agent's OpenAPI document, true to what it answers once its models are loaded.

Request bodies (:mod:`colo.modelserver.bodies`) carry bounds that hold for every model; the models' own
limits are known only after loading. Once the runtime is ready, :func:`agent_openapi` writes them into the
schemas — texts and token rows per request at most the largest ``batch_size``, ids per row at most the
longest ``max_seq_len`` and below the largest vocabulary, new tokens at most the largest ``new_tokens``
(``max_new_tokens`` disappears from ``/infer`` when no model generates), ``/infer``'s ``model`` one of the
served ids — and lists only the standard routes some model answers (:mod:`colo.modelserver.route_fit`).
With several models the bounds are the largest of them: a request to a smaller model may still get a 4xx.
The document is cached from then on; while loading it is rebuilt on each request, with the static bounds.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from colo.modelserver.route_fit import ROUTE_KINDS, fitting_routes
from colo.modelserver.runtime import AgentRuntime

_NEW_TOKEN_FIELDS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
_BODIES = ("InferBody", "EmbeddingsBody", "CompletionsBody", "ChatBody", "EmbedBody", "PredictBody")


def agent_openapi(app: FastAPI, runtime: AgentRuntime) -> dict[str, Any]:
    """``app``'s OpenAPI document with ``runtime``'s limits once it is ready (cached then)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    ready = runtime.status == "ready"
    routes: list[BaseRoute] = list(app.routes)
    if ready:
        fits = fitting_routes(runtime)
        routes = [r for r in routes if getattr(r, "path", None) not in ROUTE_KINDS or getattr(r, "path", "") in fits]
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
    if ready:
        tighten(doc, runtime)
        app.openapi_schema = doc
    return doc


def tighten(doc: dict[str, Any], runtime: AgentRuntime) -> None:
    """Write the loaded models' limits into ``doc``'s request schemas (in place)."""
    models = list(runtime.models.values())
    batch = max(m.limits.max_batch for m in models)
    seq = max(m.limits.max_seq_len for m in models)
    top_id = max(m.vocab_size for m in models) - 1
    new_tokens = max(m.limits.new_tokens for m in models)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in _BODIES:
        schema = schemas.get(name)
        if schema is None:
            continue
        for field, prop in list(schema.get("properties", {}).items()):
            if field in _NEW_TOKEN_FIELDS:
                if new_tokens == 0 and name == "InferBody":
                    del schema["properties"][field]
                else:
                    _set_max(prop, max(1, new_tokens))
            else:
                _walk(prop, batch, seq, top_id)
    infer = schemas.get("InferBody")
    if infer is not None:
        infer["properties"]["model"]["enum"] = list(runtime.models)


def _set_max(prop: dict[str, Any], maximum: int) -> None:
    for option in prop.get("anyOf", [prop]):
        if option.get("type") == "integer":
            option["maximum"] = min(option.get("maximum", maximum), maximum)


def _walk(node: Any, batch: int, seq: int, top_id: int) -> None:
    """Bound every list of texts or token rows under ``node`` (lists of lists: the outer one is the batch)."""
    if isinstance(node, list):
        for item in node:
            _walk(item, batch, seq, top_id)
        return
    if not isinstance(node, dict):
        return
    items = node.get("items")
    if node.get("type") == "array" and isinstance(items, dict):
        if items.get("type") == "integer":  # one row of ids (also a lone token array of OpenAI's input)
            node["maxItems"] = min(node.get("maxItems", seq), seq)
            items["maximum"] = min(items.get("maximum", top_id), top_id)
            return
        if items.get("type") in ("string", "array"):  # texts, or rows: one entry per sequence of the batch
            node["maxItems"] = min(node.get("maxItems", batch), batch)
    for value in node.values():
        _walk(value, batch, seq, top_id)
