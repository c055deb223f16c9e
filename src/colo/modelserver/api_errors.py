"""Errors of the built-in agent's routes, each in its own API's shape, and the JSON response they all use.

Three dialects (:class:`Dialect`), told apart by the path:

- colo's ``/infer``, ``/health``: ``{"error": kind, "detail": message}``;
- OpenAI's ``/v1/...``: ``{"error": {"message", "type", "param", "code"}}`` (400 for a bad body, 404 for an
  unknown model or one that does not fit the route);
- Hugging Face text-embeddings-inference's ``/embed``, ``/predict``: ``{"error": message, "error_type"}``.

Runtime exceptions map to one status each (:func:`error_from`): RequestError 400 (OpenAI) or 422 (colo,
TEI); UnknownModel and RouteMismatch 404 (OpenAI, TEI) or 422 (colo); NotReady, ContextLost 503; QueueFull
503 with ``Retry-After``; DeviceOutOfMemory 507. A body that fails validation (:func:`validation_response`)
gets the same 400/422, summarising at most :data:`MAX_PROBLEMS` problems by field — never echoing the input,
which may be a megabyte of text or hold what JSON cannot encode.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from colo.modelserver.batching import QueueFull
from colo.modelserver.http_common import JsonBytes
from colo.modelserver.runtime import ContextLost, DeviceOutOfMemory, NotReady, RequestError, UnknownModel

MAX_PROBLEMS = 3
MAX_MESSAGE_CHARS = 300


class Dialect(enum.Enum):
    """Whose error shape a route answers in."""

    COLO = "colo"
    OPENAI = "openai"
    TEI = "tei"


class RouteMismatch(RequestError):
    """The model exists but does not answer this route (an encoder asked for completions): 404."""


def dialect_of(path: str) -> Dialect:
    """The dialect of the route at ``path``."""
    if path.startswith("/v1/"):
        return Dialect.OPENAI
    if path in ("/embed", "/predict"):
        return Dialect.TEI
    return Dialect.COLO


@dataclass(frozen=True)
class _Mapping:
    """How one runtime error is answered in each dialect."""

    error: type[Exception]
    colo_status: int
    openai_status: int
    tei_status: int
    colo_kind: str
    openai_type: str
    openai_code: str
    tei_type: str

    def status(self, dialect: Dialect) -> int:
        return {Dialect.COLO: self.colo_status, Dialect.OPENAI: self.openai_status}.get(dialect, self.tei_status)


_TABLE: tuple[_Mapping, ...] = (  # first match wins: subclasses before their bases
    _Mapping(RouteMismatch, 422, 404, 404, "bad request", "invalid_request_error", "model_not_supported", "Validation"),
    _Mapping(UnknownModel, 422, 404, 404, "bad request", "invalid_request_error", "model_not_found", "Validation"),
    _Mapping(RequestError, 422, 400, 422, "bad request", "invalid_request_error", "invalid_value", "Validation"),
    _Mapping(NotReady, 503, 503, 503, "not ready", "server_error", "not_ready", "Unhealthy"),
    _Mapping(QueueFull, 503, 503, 503, "queue full", "server_error", "queue_full", "Overloaded"),
    _Mapping(ContextLost, 503, 503, 503, "context lost", "server_error", "context_lost", "Unhealthy"),
    _Mapping(DeviceOutOfMemory, 507, 507, 507, "out of memory", "server_error", "out_of_memory", "Backend"),
)
HANDLED: tuple[type[Exception], ...] = tuple(row.error for row in _TABLE)


def error_body(dialect: Dialect, message: str, *, kind: str, param: str | None = None) -> dict[str, Any]:
    """The error document of ``dialect``; ``kind`` is colo's kind, OpenAI's type or TEI's error_type."""
    text = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"
    if dialect is Dialect.OPENAI:
        return {"error": {"message": text, "type": kind, "param": param, "code": None}}
    if dialect is Dialect.TEI:
        return {"error": text, "error_type": kind}
    return {"error": kind, "detail": text}


def error_from(dialect: Dialect, exc: Exception, retry_after_secs: int) -> Response:
    """The response for a runtime error ``exc`` (one of :data:`HANDLED`; anything else is re-raised)."""
    row = next((r for r in _TABLE if isinstance(exc, r.error)), None)
    if row is None:
        raise exc
    headers = {"Retry-After": str(retry_after_secs)} if isinstance(exc, QueueFull) else None
    kind = {Dialect.COLO: row.colo_kind, Dialect.OPENAI: row.openai_type, Dialect.TEI: row.tei_type}[dialect]
    body = error_body(dialect, str(exc), kind=kind)
    if dialect is Dialect.OPENAI:
        body["error"]["code"] = row.openai_code
    return JsonBytes(body, status_code=row.status(dialect), headers=headers)


_TAGS = frozenset({"none", "str", "int", "bool", "float", "list", "dict"})


def _field(loc: Sequence[Any]) -> str:
    """A dotted field path from pydantic's ``loc``, without ``body`` and without the union-branch tags
    pydantic adds (``list[...]``, ``function-after[...]``, ``str``)."""
    parts = [
        str(p)
        for p in loc
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TAGS or p.startswith("constrained-")))
    ]
    return ".".join(parts) or "body"


def summarize(errors: Sequence[Any]) -> tuple[str, str | None]:
    """A one-paragraph summary of pydantic's errors (field: problem; at most MAX_PROBLEMS) and the first
    field's name. The input values are left out on purpose; a union's "should be None" branch (a field that
    may be left out) is noise and left out too."""
    meaningful = [e for e in errors if e.get("type") != "none_required"] or list(errors)
    problems: list[str] = []
    first: str | None = None
    for err in meaningful:
        where = _field(err.get("loc", ()))
        first = first or where
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    unique = list(dict.fromkeys(problems))
    text = "; ".join(unique[:MAX_PROBLEMS])
    if len(unique) > MAX_PROBLEMS:
        text += f"; and {len(unique) - MAX_PROBLEMS} more"
    return f"invalid request body: {text}", first


def validation_response(request: Request, exc: RequestValidationError) -> Response:
    """The 400 (OpenAI) or 422 (colo, TEI) answer to a body that failed validation, in the route's shape."""
    dialect = dialect_of(request.url.path)
    message, param = summarize(exc.errors())
    if dialect is Dialect.OPENAI:
        return JsonBytes(error_body(dialect, message, kind="invalid_request_error", param=param), status_code=400)
    kind = "Validation" if dialect is Dialect.TEI else "bad request"
    return JsonBytes(error_body(dialect, message, kind=kind), status_code=422)


async def http_error_response(request: Request, exc: StarletteHTTPException) -> Response:
    """A body that could not even be read (not UTF-8, not parseable: Starlette's 400) answered as a bad body
    in the route's shape; any other HTTP error (404, 405) as Starlette answers it."""
    if exc.status_code != 400:
        return await http_exception_handler(request, exc)
    dialect = dialect_of(request.url.path)
    message = f"invalid request body: {exc.detail}"
    if dialect is Dialect.OPENAI:
        return JsonBytes(error_body(dialect, message, kind="invalid_request_error"), status_code=400)
    kind = "Validation" if dialect is Dialect.TEI else "bad request"
    return JsonBytes(error_body(dialect, message, kind=kind), status_code=422)


# --- the error documents as OpenAPI schemas ---------------------------------------------------------------


class ColoErrorDoc(BaseModel):
    """colo's error: what kind, and why."""

    error: str
    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorDoc(BaseModel):
    """OpenAI's error document."""

    error: OpenAIErrorDetail


class TeiErrorDoc(BaseModel):
    """text-embeddings-inference's error document."""

    error: str
    error_type: str


_DOCS: dict[Dialect, type[BaseModel]] = {
    Dialect.COLO: ColoErrorDoc,
    Dialect.OPENAI: OpenAIErrorDoc,
    Dialect.TEI: TeiErrorDoc,
}


def error_responses(dialect: Dialect, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route answering ``statuses`` with ``dialect``'s error document (a 503 also
    declares ``Retry-After``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": _DOCS[dialect], "description": _DESCRIPTIONS.get(status, "error")}
        if status == 503:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait (a full queue only)", "schema": {"type": "string"}}
            }
        out[status] = entry
    return out


_DESCRIPTIONS = {
    400: "invalid request",
    404: "no such model, or none here answers this route",
    422: "invalid request",
    503: "loading, context lost, or the queue is full (then with Retry-After)",
    507: "the batch ran the device out of memory (the agent stays up)",
}
