"""``GET /healthz``, ``GET /mps/allocation``, ``GET /gpu/info``, ``GET /metrics``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from colo import __version__
from colo.api.cache import TtlCache
from colo.api.context import ctx_of, errors, require_read
from colo.api.gpu_view import gpu_info_document
from colo.api.metrics import MetricsInput, registry_for
from colo.api.source import ApiSource
from colo.errors import SupervisorError
from colo.plan.types import Plan

router = APIRouter(tags=["reads"], dependencies=[Depends(require_read)], responses=errors(401))


def _raw_body(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI's ``responses`` for a route that answers a ready-made body of ``media_type``."""
    return {200: {"content": {media_type: {}}, "description": description}}


@router.get("/healthz", summary="Liveness: the API answers")
def healthz() -> dict[str, Any]:
    """``{"status": "ok", "version": ...}`` whenever the process serves requests."""
    return {"status": "ok", "version": __version__}


async def cached_body(cache: TtlCache[bytes], load: Callable[[], bytes]) -> bytes:
    """A fresh body straight from the cache (no thread hop), else loaded in the thread pool: the source's
    methods may block on the orchestrator's lock, which must never stall the event loop."""
    fresh = cache.fresh()
    if fresh is not None:
        return fresh
    return await run_in_threadpool(cache.get, load)


@router.get(
    "/mps/allocation",
    summary="The allocation document in the seed's format",
    responses=_raw_body("application/json", "mps_resource_allocation and colo"),
)
async def mps_allocation(request: Request) -> Response:
    """The plan as ``mps_allocation_config.json``: ``mps_resource_allocation.agent_allocations`` (one entry
    per placed agent: ``mps_memory_limit_gb``, ``calculated_requirement_gb``, ``safety_margin_gb``,
    ``priority``, ``models``, ``colo``) and ``.system_summary``; colo's detail under ``colo``, among it which
    GPUs run MPS and why (``colo.gpus[].mps``, ``mps_mode``, ``mps_reason``; ``colo.mps_gpus``) and how each
    agent's limit is held (``agent_allocations.<agent>.colo.memory_enforcement``: mps-pinned, allocator-cap,
    none). Rendered once per plan; at most ``read_ttl_secs`` old after a reload not made through this API.

    Equivalent: ``curl -s http://127.0.0.1:8014/mps/allocation | jq .mps_resource_allocation``.
    """
    ctx = ctx_of(request)
    body = await cached_body(ctx.allocation_body, lambda: ctx.allocation_cache.body(_plan_of(ctx.source)))
    return Response(content=body, media_type="application/json")


def _plan_of(source: ApiSource) -> Plan:
    plan = source.snapshot().plan
    if plan is None:
        raise SupervisorError("colo is not up yet: no plan in force")
    return plan


@router.get(
    "/gpu/info",
    summary="GPUs, MPS daemons and their clients",
    responses=_raw_body("application/json", "the seed's keys and colo's detail"),
)
async def gpu_info(request: Request) -> Response:
    """``mps_enabled`` and ``mps`` (``enabled``, ``pipe_dir``, ``control_process``) as in the seed, then per
    GPU: memory (bytes), utilisation (percent), temperature (°C), power (W), its MPS daemon (pipe dir,
    servers with pid/status/clients) and its processes joined to colo agents. Without a GPU:
    ``mps_enabled: false`` and an ``error`` that says why. GPU readings are the source's last poll (about once a second).
    """
    ctx = ctx_of(request)

    def render() -> bytes:
        snap = ctx.source.snapshot()
        doc = gpu_info_document(snap.gpu, snap.agents)
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    return Response(content=await cached_body(ctx.gpu_info_body, render), media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses=_raw_body("text/plain", "Prometheus text format 0.0.4"),
)
def metrics(request: Request) -> Response:
    """Per-agent memory used/limit (bytes), state, restarts; per-GPU memory, utilisation, temperature, power;
    MPS daemon up per GPU; plan totals. See ``colo.api.metrics`` for every name."""
    ctx = ctx_of(request)

    def read() -> MetricsInput:
        snap = ctx.source.snapshot()
        return MetricsInput(snap.agents, snap.plan, snap.gpu, snap.recoveries, snap.usage, snap.usage_rows)

    return Response(content=generate_latest(registry_for(read)), media_type=CONTENT_TYPE_LATEST)
