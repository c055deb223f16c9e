"""What every route reads: the source (its snapshot), the token check, body caches, the apply lock (one per app)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel

from colo.api.auth import bearer_matches
from colo.api.cache import PlanDocCache, TtlCache
from colo.api.source import ApiSource
from colo.clock import SYSTEM_CLOCK, Clock
from colo.plan.types import Plan


def _render_allocation(plan: Plan) -> dict[str, Any]:
    from colo.plan.allocation_doc import allocation_document

    return allocation_document(plan)


@dataclass(frozen=True)
class ApiOptions:
    """Tunables of one app. Seconds and bytes."""

    read_ttl_secs: float = 0.5  # rendered /mps/allocation and /gpu/info bodies are reused this long
    max_body_bytes: int = 1024 * 1024  # POST bodies over this get 413
    event_poll_secs: float = 0.5  # how often an SSE stream looks for new events
    stream_max_secs: float = 3600.0  # an SSE stream ends after this (clients reconnect with Last-Event-ID)
    heartbeat_secs: float = 15.0  # an SSE comment line keeps idle proxies from closing the stream


@dataclass
class ApiContext:
    """Per-app state shared by the routes (stored at ``app.state.ctx``)."""

    source: ApiSource
    token: str
    open_reads: bool
    options: ApiOptions
    clock: Clock = SYSTEM_CLOCK
    apply_lock: threading.Lock = field(default_factory=threading.Lock)
    allocation_cache: PlanDocCache = field(init=False)
    allocation_body: TtlCache[bytes] = field(init=False)
    gpu_info_body: TtlCache[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.allocation_cache = PlanDocCache(_render_allocation)
        self.allocation_body = TtlCache(self.options.read_ttl_secs, self.clock)
        self.gpu_info_body = TtlCache(self.options.read_ttl_secs, self.clock)

    def changed(self) -> None:
        """Forget rendered bodies after this API changed something (an apply, an action)."""
        self.allocation_body.clear()
        self.gpu_info_body.clear()


class ErrorBody(BaseModel):
    """Every error answer: ``error`` is one paragraph (never containing the token)."""

    error: str
    field: str | None = None
    line: int | None = None
    source: str | None = None
    agents: list[str] | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    text = {
        401: "missing or wrong API token",
        404: "no such agent",
        409: "not possible now (read-only source, another apply running, agent state)",
        413: "request body over the limit",
        422: "invalid input, or a plan that does not fit (nothing changed)",
        503: "the GPU or its MPS daemon cannot be read",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


UNAUTHORIZED = HTTPException(
    status_code=401,
    detail={
        "error": "missing or wrong API token; send 'Authorization: Bearer <token>' "
        "(the token is in the state dir's api-token file, or COLO_API_TOKEN)"
    },
    headers={"WWW-Authenticate": "Bearer"},
)


def require_token(request: Request) -> None:
    """Dependency of mutating routes: 401 unless the bearer token matches."""
    if not bearer_matches(request.headers.get("authorization"), ctx_of(request).token):
        raise UNAUTHORIZED


def require_read(request: Request) -> None:
    """Dependency of read routes: open when reads are open, else the same check as mutations."""
    ctx = ctx_of(request)
    if not ctx.open_reads and not bearer_matches(request.headers.get("authorization"), ctx.token):
        raise UNAUTHORIZED
