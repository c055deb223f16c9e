"""``POST /apply``: a new colo.yaml (YAML or JSON body) -> validate -> plan -> rolling apply; ``POST /tune``:
tuned limits (``colo tune --apply``) -> recorded by the orchestrator -> the same rolling apply."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from colo.api.context import ctx_of, errors, require_token
from colo.errors import ConfigError
from colo.spec import ColoConfig
from colo.spec.load import MAX_CONFIG_BYTES, Loaded, config_from_loaded, decode_text, parse_document
from colo.supervise.tune.inputs import TunedChange

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
        "description": "A complete colo.yaml, as YAML or JSON (not empty); a top-level `force: true` beside its sections "
        "applies a plan that predicts an agent runs out of memory (else 422, nothing changed).",
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


def _take_force(loaded: Loaded) -> bool:
    """The body's top-level ``force`` (not a colo.yaml section: taken out before validation). Raises
    ConfigError when it is not true or false."""
    if not isinstance(loaded.data, dict) or "force" not in loaded.data:
        return False
    force = loaded.data.pop("force")
    if not isinstance(force, bool):
        raise ConfigError(
            f"force: {force!r} is not true or false", source=loaded.source, field="force",
            line=loaded.lines.get(("force",)), hint="send `force: true` to apply a plan that predicts out-of-memory",
        )
    return force


def _config_and_force(raw: bytes, source: str = "<request body>") -> tuple[ColoConfig, bool]:
    """The body as colo.yaml (the file reader's bounds: size, aliases, depth, UTF-8) and its ``force``."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"is over {MAX_CONFIG_BYTES} bytes", source=source)
    loaded = parse_document(decode_text(raw, source), source)
    force = _take_force(loaded)
    return config_from_loaded(loaded), force


def _outcome(result: Any) -> dict[str, Any]:
    return {
        "restarted": list(result.restarted),
        "started": list(result.started),
        "stopped": list(result.stopped),
        "unchanged": list(result.unchanged),
        "left_out": list(result.left_out),
    }


def _one_apply_at_a_time(request: Request, act: Any) -> Any:
    ctx = ctx_of(request)
    if not ctx.apply_lock.acquire(blocking=False):
        raise HTTPException(status_code=409, detail={"error": "another apply is running; try again when it ends"})
    try:
        return act(ctx.source)
    finally:
        ctx.apply_lock.release()
        ctx.changed()


def _apply(request: Request, config: ColoConfig, force: bool) -> dict[str, Any]:
    path = unquote(request.headers.get(CONFIG_PATH_HEADER, "")) or None
    result = _one_apply_at_a_time(request, lambda source: source.apply(config, path, force=force))
    return {"applied": True, **_outcome(result)}


def _tune(request: Request, changes: list[TunedChange]) -> dict[str, Any]:
    tuned, result = _one_apply_at_a_time(request, lambda source: source.tune(changes))
    return {"tuned": list(tuned), "applied": _outcome(result) if result is not None else None}


@router.post(
    "/apply",
    dependencies=[Depends(require_token)],
    summary="Apply a new configuration (token required)",
    openapi_extra=BODY_DOC,
    responses=errors(401, 409, 413, 422, 503),
)
async def apply(request: Request) -> dict[str, Any]:
    """Validate the body as colo.yaml, plan it and roll it out agent by agent.

    422 ``{"error", "field", "line"}`` for an invalid (or empty) file, 422 ``{"error", "agents"}`` when it does not fit,
    422 ``{"error", "predicted_oom"}`` when the plan predicts an agent runs out of memory and the body does not say
    ``force: true`` (nothing changed in each case), 409 while another apply runs, 413 over the body limit.
    """
    raw = await request.body()
    if not raw.strip():
        raise ConfigError(
            "is empty", source="<request body>", hint="send a complete colo.yaml as YAML or JSON (Content-Type "
            "application/yaml, application/json or text/plain)",
        )
    # The file reader's bounds (aliases, depth, UTF-8) apply; parsing is off the event loop, like the apply.
    config, force = await run_in_threadpool(_config_and_force, raw)
    return await run_in_threadpool(_apply, request, config, force)


TUNE_DOC = {
    "requestBody": {
        "required": True,
        "description": "`{\"changes\": [{\"agent\", \"limit_bytes\", \"basis_bytes\", \"current_bytes\", "
        "\"current_source\", \"detail\"}, ...]}`: the accepted proposals of `colo tune`.",
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["changes"],
            "properties": {"changes": {"type": "array", "items": {
                "type": "object",
                "required": ["agent", "limit_bytes", "basis_bytes", "current_bytes", "current_source"],
                "properties": {
                    "agent": {"type": "string", "minLength": 1},
                    "limit_bytes": {"type": "integer", "minimum": 1},
                    "basis_bytes": {"type": "integer", "minimum": 1},
                    "current_bytes": {"type": "integer", "minimum": 1},
                    "current_source": {"type": "string", "enum": ["policy", "tuned", "rolled back"]},
                    "detail": {"type": "string"},
                },
            }}},
        }}},
    }
}


@router.post(
    "/tune",
    dependencies=[Depends(require_token)],
    summary="Record tuned limits and roll them out (token required)",
    openapi_extra=TUNE_DOC,
    responses=errors(401, 409, 413, 422),
)
async def tune(request: Request) -> dict[str, Any]:
    """Record the tuned limits in the state dir's ``tuned_limits.json`` (the orchestrator is its one writer)
    and apply the configuration in force again: only the agents whose limit changed restart, one at a time.

    Answers ``{"tuned": [agents], "applied": {...} | null}``; 422 ``{"error", "field"}`` for a malformed body or
    an agent the configuration does not have, 409 while another apply runs.
    """
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise ConfigError(f"is not JSON ({exc})", source="<request body>") from exc
    raw = body.get("changes") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        raise ConfigError("changes: give a list of tuned changes", source="<request body>", field="changes")
    changes = [TunedChange.from_dict(c) for c in raw]
    return await run_in_threadpool(_tune, request, changes)
