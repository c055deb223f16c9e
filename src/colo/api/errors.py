"""Every error the API answers, in one JSON shape: ``{"error": "<one paragraph>", ...}``.

colo's own errors (:class:`~colo.errors.ColoError`), HTTP errors raised by routes (401, 404, 409), FastAPI's
request-validation errors (a bad query parameter, which FastAPI would answer as ``{"detail": [...]}``),
unknown routes and methods, and an unexpected exception inside a route all come back as ``{"error": ...}``
— never containing the API token. Config errors add ``field``/``line``/``source``; a plan that does not fit
adds ``agents``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from colo.supervise.planning import PredictedOutOfMemory

log = logging.getLogger("colo.api")

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
    if isinstance(err, PredictedOutOfMemory):  # the client raises it again: `colo apply` exits 2 as `colo up` does
        body.update(predicted_oom=True, hint=redact(err.hint, token) if err.hint else None)
    return body


def _validation_body(err: RequestValidationError) -> dict[str, Any]:
    """FastAPI's list of problems as one paragraph naming the first parameter (``query.limit``)."""
    problems = list(err.errors())
    if not problems:
        return {"error": "invalid request"}
    first = problems[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid"))
    more = f" ({len(problems) - 1} more)" if len(problems) > 1 else ""
    return {"error": f"{where}: {msg}{more}" if where else msg + more, "field": where or None}


def install_error_handlers(app: FastAPI, token_of: Any) -> None:
    """Answer every error of ``app`` as ``{"error": ...}``. ``token_of(request)`` gives the token to redact."""

    @app.exception_handler(ColoError)
    async def _colo_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, ColoError)
        return JSONResponse(error_body(err, token_of(request)), status_code=error_status(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        body = err.detail if isinstance(err.detail, dict) and "error" in err.detail else {"error": str(err.detail)}
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        body = _validation_body(err)
        body["error"] = redact(body["error"], token_of(request))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": f"internal error ({type(err).__name__}); the details are in the orchestrator's log"},
            status_code=500,
        )


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "field": {"type": ["string", "null"]},
        "line": {"type": ["integer", "null"]},
        "source": {"type": ["string", "null"]},
        "agents": {"type": ["array", "null"], "items": {"type": "string"}},
    },
}


def errors_in_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents validation errors as ``{"detail": [...]}``; this API answers ``{"error": ...}``.

    Rewrites every response that refers to ``HTTPValidationError`` to the error shape (in place; returned).
    """
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for methods in doc.get("paths", {}).values():
        for op in methods.values():
            for resp in (op.get("responses") or {}).values():
                content = resp.get("content", {}).get("application/json", {})
                ref = content.get("schema", {}).get("$ref", "")
                if ref.endswith("/HTTPValidationError"):
                    content["schema"] = ERROR_SCHEMA
                    resp["description"] = "invalid parameters"
    return doc
