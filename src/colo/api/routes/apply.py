"""``POST /apply``: a new colo.yaml (YAML or JSON body) -> validate -> plan -> rolling apply."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from colo.api.context import ctx_of, errors, require_token
from colo.errors import ConfigError
from colo.spec import ColoConfig
from colo.spec.load import load_config_bytes

router = APIRouter(tags=["apply"])

#: A YAML (or plain-text) body: any text with something in it; an empty or blank body is refused (422).
NON_BLANK_TEXT: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": r"\S"}


def config_schemas() -> dict[str, dict[str, Any]]:
    """colo.yaml's JSON Schema (``colo schema``) as OpenAPI components: ``ColoConfig`` and every model it
    refers to, by name (``#/components/schemas/...``). What a JSON body of ``POST /apply`` must be."""
    schema = ColoConfig.model_json_schema(
        by_alias=True, mode="validation", ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    return {**defs, "ColoConfig": schema}


#: The body ``POST /apply`` accepts, per content type. A new form of body (or a field beside the file) goes
#: here and in :func:`apply`'s reading of it, nowhere else.
BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A complete colo.yaml, as YAML or JSON (not empty).",
        "content": {
            "application/yaml": {"schema": NON_BLANK_TEXT},
            "application/json": {"schema": {"$ref": "#/components/schemas/ColoConfig"}},
            "text/plain": {"schema": NON_BLANK_TEXT},
        },
    }
}


#: Optional request header: the path of the file the body came from, percent-encoded (``colo apply FILE``
#: sends it), which the orchestrator reads again on SIGHUP.
CONFIG_PATH_HEADER = "X-Colo-Config-Path"


def _apply(request: Request, config: ColoConfig) -> dict[str, Any]:
    ctx = ctx_of(request)
    if not ctx.apply_lock.acquire(blocking=False):
        raise HTTPException(status_code=409, detail={"error": "another apply is running; try again when it ends"})
    try:
        result = ctx.source.apply(config, unquote(request.headers.get(CONFIG_PATH_HEADER, "")) or None)
    finally:
        ctx.apply_lock.release()
        ctx.changed()
    return {
        "applied": True,
        "restarted": list(result.restarted),
        "started": list(result.started),
        "stopped": list(result.stopped),
        "unchanged": list(result.unchanged),
        "left_out": list(result.left_out),
    }


@router.post(
    "/apply",
    dependencies=[Depends(require_token)],
    summary="Apply a new configuration (token required)",
    openapi_extra=BODY_DOC,
    responses=errors(401, 409, 413, 422, 503),
)
async def apply(request: Request) -> dict[str, Any]:
    """Validate the body as colo.yaml, plan it and roll it out agent by agent.

    422 ``{"error", "field", "line"}`` for an invalid (or empty) file, 422 ``{"error", "agents"}`` when it does not fit
    (nothing changed either way), 409 while another apply runs, 413 over the body limit.
    """
    raw = await request.body()
    if not raw.strip():
        raise ConfigError(
            "is empty", source="<request body>", hint="send a complete colo.yaml as YAML or JSON (Content-Type "
            "application/yaml, application/json or text/plain)",
        )
    # The file reader's bounds (aliases, depth, UTF-8) apply; parsing is off the event loop, like the apply.
    config = await run_in_threadpool(load_config_bytes, raw, "<request body>")
    return await run_in_threadpool(_apply, request, config)
