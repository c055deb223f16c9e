"""``GET /events``: recent events as JSON, or a server-sent-events stream with ``?follow=1``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from colo.api.context import ApiContext, ctx_of, errors, require_read
from colo.supervise.snapshots import Event

router = APIRouter(tags=["events"], dependencies=[Depends(require_read)], responses=errors(401))

MAX_SEQ = 2**62


def sse_frame(event: Event) -> str:
    """One event as an SSE frame: ``id`` (seq, for Last-Event-ID), ``event`` (kind), ``data`` (JSON)."""
    return f"id: {event.seq}\nevent: {event.kind.value}\ndata: {json.dumps(event.to_dict())}\n\n"


async def follow_events(ctx: ApiContext, request: Request, since: int, limit: int) -> AsyncIterator[str]:
    """Yield SSE frames for events after ``since`` until the client leaves or ``stream_max_secs`` pass."""
    opts = ctx.options
    started = ctx.clock.monotonic()
    last_beat = started
    yield ": colo events\n\n"
    while True:
        batch = await run_in_threadpool(ctx.source.events, since, limit)
        for event in batch:
            since = max(since, event.seq)
            yield sse_frame(event)
        now = ctx.clock.monotonic()
        if now - started >= opts.stream_max_secs or await request.is_disconnected():
            return
        if now - last_beat >= opts.heartbeat_secs:
            last_beat = now
            yield ": keep-alive\n\n"
        if not batch:
            await asyncio.sleep(opts.event_poll_secs)


@router.get(
    "/events",
    summary="Recent events, or a live stream with follow=1",
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
)
async def events(
    request: Request,
    since: int = Query(0, ge=0, le=MAX_SEQ, description="Only events with seq greater than this."),
    limit: int = Query(200, ge=1, le=1000, description="At most this many events per answer/batch."),
    follow: bool = Query(False, description="Stream new events as server-sent events."),
) -> Any:
    """``{"events": [...]}`` (seq, time, kind, agent, message, gpu), oldest first; with ``follow=1`` a
    ``text/event-stream`` whose ids are the events' seq (a ``Last-Event-ID`` header resumes after it)."""
    ctx = ctx_of(request)
    last_id = request.headers.get("last-event-id", "").strip()
    if last_id.isdigit() and len(last_id) < 19:
        since = max(since, int(last_id))
    if follow:
        return StreamingResponse(
            follow_events(ctx, request, since, limit),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    batch = await run_in_threadpool(ctx.source.events, since, limit)
    return {"events": [e.to_dict() for e in batch]}
