"""``GET /events``: recent events as JSON, or a server-sent-events stream with ``?follow=1``."""

from __future__ import annotations

import asyncio
import functools
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
MAX_EVENTS = 1000  # per answer or stream batch


def sse_frame(event: Event) -> str:
    """One event as an SSE frame: ``id`` (seq, for Last-Event-ID), ``event`` (kind), ``data`` (JSON)."""
    return f"id: {event.seq}\nevent: {event.kind.value}\ndata: {json.dumps(event.to_dict())}\n\n"


async def follow_events(
    ctx: ApiContext, request: Request, since: int, limit: int, *, tail: bool = False
) -> AsyncIterator[str]:
    """Yield SSE frames for events after ``since`` until the client leaves or ``stream_max_secs`` pass; with
    ``tail`` the first batch is the newest ``limit`` events instead of the oldest."""
    opts = ctx.options
    started = ctx.clock.monotonic()
    last_beat = started
    yield ": colo events\n\n"
    while True:
        batch = await run_in_threadpool(functools.partial(ctx.source.events, since, limit, tail=tail))
        tail = False
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
    limit: int = Query(200, ge=1, le=MAX_EVENTS, description="At most this many events per answer/batch: the oldest."),
    tail: int | None = Query(
        None, ge=1, le=MAX_EVENTS, description="Instead: the newest this many events, oldest first (limit does not apply)."
    ),
    follow: bool = Query(False, description="Stream new events as server-sent events."),
) -> Any:
    """``{"events": [...]}`` (seq, time, kind, agent, message, gpu) with seq greater than ``since``, oldest
    first: the first ``limit`` of them, or with ``tail=N`` the newest N. With ``follow=1`` a
    ``text/event-stream`` whose ids are the events' seq (a ``Last-Event-ID`` header resumes after it); ``tail``
    then starts the stream with the newest N."""
    ctx = ctx_of(request)
    last_id = request.headers.get("last-event-id", "").strip()
    if last_id.isdigit() and len(last_id) < 19:
        since = max(since, int(last_id))
    count = tail if tail is not None else limit
    if follow:
        return StreamingResponse(
            follow_events(ctx, request, since, count, tail=tail is not None),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    batch = await run_in_threadpool(functools.partial(ctx.source.events, since, count, tail=tail is not None))
    return {"events": [e.to_dict() for e in batch]}
