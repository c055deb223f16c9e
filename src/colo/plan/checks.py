"""Cross-checks behind ``colo validate``: findings about files that parse but do not add up. Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from colo import units
from colo.plan.types import Plan
from colo.spec.config import Margin
from colo.spec.seed_format import AllocationFile

Severity = Literal["error", "warning"]

# Seed files round GiB values to 1-3 decimals; totals within this are equal.
GB_TOLERANCE = 0.011
PCT_TOLERANCE = 0.15


@dataclass(frozen=True)
class Finding:
    """One problem: ``where`` is a field path (``system_summary.total_calculated_memory_gb``)."""

    severity: Severity
    where: str
    message: str


def check_plan(plan: Plan) -> list[Finding]:
    """Findings for a planned colo config: agents that fit nowhere, and policy warnings."""
    out = [Finding("error", f"agents.{u.agent}", f"does not fit: {u.reason}") for u in plan.unplaced]
    out += [Finding(f.severity, f"agents.{f.agent}.{f.topic}", f.message) for f in plan.findings]
    return out


def check_allocation(doc: AllocationFile, margin_policy: Margin, max_clients_per_gpu: int = 48) -> list[Finding]:
    """Findings for an ``mps_allocation_config.json``: rows vs totals, limits vs requirements, capacity."""
    alloc = doc.mps_resource_allocation
    rows = alloc.agent_allocations
    out: list[Finding] = []
    base = "mps_resource_allocation.agent_allocations"
    for name, row in rows.items():
        where = f"{base}.{name}"
        if row.mps_memory_limit_gb + 1e-9 < row.calculated_requirement_gb:
            out.append(Finding(
                "error", f"{where}.mps_memory_limit_gb",
                f"limit {row.mps_memory_limit_gb} GB is below the requirement {row.calculated_requirement_gb} GB",
            ))
        elif abs(row.calculated_requirement_gb + row.safety_margin_gb - row.mps_memory_limit_gb) > GB_TOLERANCE:
            out.append(Finding(
                "error", f"{where}.safety_margin_gb",
                f"requirement {row.calculated_requirement_gb} + margin {row.safety_margin_gb} GB does not equal "
                f"the limit {row.mps_memory_limit_gb} GB",
            ))
        req = units.from_gib(row.calculated_requirement_gb)
        margin = units.from_gib(row.safety_margin_gb)
        wanted = margin_policy.margin_bytes(req)
        if req and margin < wanted:
            out.append(Finding(
                "warning", f"{where}.safety_margin_gb",
                f"margin {row.safety_margin_gb} GB on {row.calculated_requirement_gb} GB is "
                f"{100 * margin / req:.0f}%, below the policy's {margin_policy.describe()} "
                f"({units.gib(wanted)} GB)",
            ))
    s = alloc.system_summary
    if s is None:
        out.append(Finding("warning", "mps_resource_allocation.system_summary", "missing; totals not checked"))
        return out
    calc = sum(r.calculated_requirement_gb for r in rows.values())
    total = sum(r.mps_memory_limit_gb for r in rows.values())
    margin_sum = sum(r.safety_margin_gb for r in rows.values())
    sbase = "mps_resource_allocation.system_summary"
    for key, written, derived in (
        ("total_calculated_memory_gb", s.total_calculated_memory_gb, calc),
        ("total_mps_allocation_gb", s.total_mps_allocation_gb, total),
        ("total_safety_margin_gb", s.total_safety_margin_gb, margin_sum),
    ):
        if abs(written - derived) > GB_TOLERANCE * max(1, len(rows)) ** 0.5:
            out.append(Finding(
                "error", f"{sbase}.{key}", f"says {written:g} GB but the agent rows add up to {derived:.3g} GB"
            ))
    if s.total_agents != len(rows):
        out.append(Finding("error", f"{sbase}.total_agents", f"says {s.total_agents} but there are {len(rows)} rows"))
    eff = 100.0 * calc / total if total else 0.0
    if abs(s.memory_efficiency_percent - eff) > PCT_TOLERANCE:
        out.append(Finding(
            "error", f"{sbase}.memory_efficiency_percent",
            f"says {s.memory_efficiency_percent:g}% but calculated / allocated from the rows is {eff:.1f}%",
        ))
    util = 100.0 * total / s.gpu_memory_gb
    if abs(s.gpu_utilization_percent - util) > PCT_TOLERANCE:
        out.append(Finding(
            "error", f"{sbase}.gpu_utilization_percent",
            f"says {s.gpu_utilization_percent:g}% but allocated / GPU memory from the rows is {util:.1f}%",
        ))
    if total > s.gpu_memory_gb + 1e-9:
        out.append(Finding(
            "error", f"{sbase}.total_mps_allocation_gb",
            f"limits add up to {total:.3g} GB, over the GPU's {s.gpu_memory_gb:g} GB",
        ))
    out += _per_gpu_checks(doc, max_clients_per_gpu)
    return out


def _per_gpu_checks(doc: AllocationFile, max_clients: int) -> list[Finding]:
    """With colo's placement keys: per-GPU capacity and the MPS client cap."""
    per_gpu: Counter[str] = Counter()
    alloc_gb: dict[str, float] = {}
    for row in doc.mps_resource_allocation.agent_allocations.values():
        extra = (row.model_extra or {}).get("colo")
        gpu = extra.get("gpu") if isinstance(extra, dict) else None
        if isinstance(gpu, dict) and "key" in gpu:
            per_gpu[str(gpu["key"])] += 1
            key = str(gpu["key"])
            alloc_gb[key] = alloc_gb.get(key, 0.0) + row.mps_memory_limit_gb
    out = []
    for key, n in sorted(per_gpu.items()):
        if n > max_clients:
            out.append(Finding("error", f"gpu {key}", f"{n} agents exceed the MPS client cap of {max_clients}"))
    top = (doc.model_extra or {}).get("colo")
    gpus = top.get("gpus", []) if isinstance(top, dict) else []
    for g in gpus if isinstance(gpus, list) else []:
        if isinstance(g, dict) and "key" in g and "memory_gb" in g:
            used = alloc_gb.get(str(g["key"]), 0.0)
            if used > float(g["memory_gb"]) + 1e-9:
                out.append(Finding(
                    "error", f"gpu {g['key']}", f"limits add up to {used:.3g} GB, over its {g['memory_gb']} GB"
                ))
    return out
