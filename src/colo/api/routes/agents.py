"""``GET /agents``, ``GET /agents/{name}``, ``POST /agents/{name}/start|stop|restart``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from colo.api.context import ctx_of, errors, require_read, require_token
from colo.api.source import ApiSource
from colo.supervise.snapshots import AgentStatus

router = APIRouter(tags=["agents"], responses=errors(401, 404))

AgentName = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="The agent's name in colo.yaml.")


def agent_dict(s: AgentStatus) -> dict[str, Any]:
    """An agent status as JSON: state, pid, GPU, limit/requirement/used/peak (bytes), restarts, last error and
    the last line its process printed when it failed (``last_error_line``)."""
    return s.to_dict()


def _status(source: ApiSource, name: str) -> AgentStatus:
    try:
        return source.snapshot().agent(name)
    except KeyError:
        raise HTTPException(status_code=404, detail={"error": f"no agent named {name!r}"}) from None


@router.get("/agents", dependencies=[Depends(require_read)], summary="Every agent's status")
def agents(request: Request) -> dict[str, Any]:
    """``{"agents": [...]}``, each as ``GET /agents/{name}`` returns it."""
    return {"agents": [agent_dict(s) for s in ctx_of(request).source.snapshot().agents]}


@router.get("/agents/{name}", dependencies=[Depends(require_read)], summary="One agent's status")
def agent(request: Request, name: str = AgentName) -> dict[str, Any]:
    """State, pid, GPU, limit, memory used now and peak (bytes), restarts, last error; 404 if unknown."""
    return agent_dict(_status(ctx_of(request).source, name))


@router.post(
    "/agents/{name}/{action}",
    dependencies=[Depends(require_token)],
    summary="Start, stop or restart an agent (token required)",
    responses=errors(409, 503),
)
def agent_action(
    request: Request,
    action: Literal["start", "stop", "restart"],
    name: str = AgentName,
) -> dict[str, Any]:
    """Ask the supervisor to start, stop or restart ``name``; answers with the agent's status afterwards.

    404 unknown agent; 409 when the action cannot be done now (read-only ``colo serve``, agent fatal...).
    """
    source = ctx_of(request).source
    _status(source, name)
    try:
        getattr(source, action)(name)
    except KeyError:
        raise HTTPException(status_code=404, detail={"error": f"no agent named {name!r}"}) from None
    finally:
        ctx_of(request).changed()
    return {"agent": name, "action": action, "status": agent_dict(_status(source, name))}
