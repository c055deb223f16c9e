"""The plan as the seed's ``mps_allocation_config.json`` document (with colo's additions alongside).

Seed readers see exactly the keys they know::

    {"mps_resource_allocation": {
        "agent_allocations": {"<agent>": {"mps_memory_limit_gb", "calculated_requirement_gb",
                                          "safety_margin_gb", "priority", "models", "colo": {...}}},
        "system_summary": {"total_agents", "total_calculated_memory_gb", "total_mps_allocation_gb",
                           "total_safety_margin_gb", "memory_efficiency_percent",
                           "gpu_utilization_percent", "gpu_memory_gb", "colo": {...}}},
     "colo": {"format": 1, "placement", "gpus": [...], "mps_gpus": [...], "unplaced": [...], "findings": [...]}}

Which GPUs run MPS and why: ``colo.gpus[].mps`` / ``mps_mode`` (auto | on | off) / ``mps_reason``, the keys
of those that do in ``colo.mps_gpus``; per agent ``colo.mps`` and ``colo.memory_enforcement`` (mps-pinned,
allocator-cap, none: how its limit is held to).

``*_gb`` values are GiB (the seed's "GB"), rounded to 3 decimals; the exact values are in ``colo`` as bytes
and as MPS's ``<N>M`` strings. Summaries are derived from the rows.
"""

from __future__ import annotations

from typing import Any

from colo import units
from colo.plan.types import AgentPlan, GpuSlot, Plan

FORMAT_VERSION = 1


def _gpu_ref(gpu: GpuSlot | None) -> dict[str, Any] | None:
    if gpu is None:
        return None
    return {"node": gpu.node, "index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "key": gpu.key}


def _agent_entry(a: AgentPlan) -> dict[str, Any]:
    return {
        "mps_memory_limit_gb": units.gib(a.limit_bytes),
        "calculated_requirement_gb": units.gib(a.requirement_bytes),
        "safety_margin_gb": units.gib(a.margin_bytes),
        "priority": a.priority,
        "models": list(a.model_ids),
        "colo": {
            "gpu": _gpu_ref(a.gpu),
            "mps_pinned_device_mem_limit": units.mps_limit(a.limit_bytes),
            "mps_memory_limit_mib": -(-a.limit_bytes // units.MIB),
            "limit_bytes": a.limit_bytes,
            "requirement_bytes": a.requirement_bytes,
            "margin_bytes": a.margin_bytes,
            "margin_policy": a.margin_policy,
            "active_thread_percentage": a.active_thread_pct,
            "client_priority": a.client_priority,
            "mps": a.mps,
            "memory_enforcement": a.enforcement,
            "model_memory": [
                {"model": m.model, "requirement_bytes": m.requirement_bytes, "source": m.source}
                for m in a.models
            ],
        },
    }


def allocation_document(plan: Plan) -> dict[str, Any]:
    """Render ``plan`` as the seed-format allocation document (placed agents only; see ``colo.unplaced``)."""
    s = plan.summary
    placed = plan.placed
    gpu_names = sorted({g.gpu.name for g in plan.gpus})
    return {
        "mps_resource_allocation": {
            "agent_allocations": {a.name: _agent_entry(a) for a in placed},
            "system_summary": {
                "total_agents": s.total_agents,
                "total_calculated_memory_gb": units.gib(s.calculated_bytes),
                "total_mps_allocation_gb": units.gib(s.allocated_bytes),
                "total_safety_margin_gb": units.gib(s.margin_bytes),
                "memory_efficiency_percent": round(s.efficiency_pct, 1),
                "gpu_utilization_percent": round(s.utilization_pct, 1),
                "gpu_memory_gb": units.gib(s.gpu_memory_bytes),
                "colo": {
                    "gpu_count": len(plan.gpus),
                    "gpu_names": gpu_names,
                    "calculated_bytes": s.calculated_bytes,
                    "allocated_bytes": s.allocated_bytes,
                    "margin_bytes": s.margin_bytes,
                    "gpu_memory_bytes": s.gpu_memory_bytes,
                },
            },
        },
        "colo": {
            "format": FORMAT_VERSION,
            "placement": plan.placement,
            "max_clients_per_gpu": plan.max_clients_per_gpu,
            "gpus": [
                {
                    **(_gpu_ref(g.gpu) or {}),
                    "memory_gb": units.gib(g.gpu.memory_total_bytes),
                    "agents": list(g.agents),
                    "calculated_gb": units.gib(g.calculated_bytes),
                    "allocated_gb": units.gib(g.allocated_bytes),
                    "free_gb": units.gib(g.free_bytes),
                    "utilization_percent": round(g.utilization_pct, 1),
                    "efficiency_percent": round(g.efficiency_pct, 1),
                    "mps": g.mps,
                    "mps_mode": g.mps_mode,
                    "mps_reason": g.mps_reason,
                }
                for g in plan.gpus
            ],
            "mps_gpus": [g.key for g in plan.mps_gpus()],
            "unplaced": [
                {"agent": u.agent, "priority": u.priority, "limit_gb": units.gib(u.limit_bytes), "reason": u.reason}
                for u in plan.unplaced
            ],
            "findings": [{"agent": f.agent, "severity": f.severity, "message": f.message} for f in plan.findings],
        },
    }
