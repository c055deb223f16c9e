"""Why each agent landed where it did: a plain-text account of a plan's placement. Pure.

The planner (:mod:`colo.plan.placement`) takes agents high priority first, then larger limits, then by name;
``binpack`` puts each on the GPU with the least free room that still fits it, ``spread`` on the GPU with the
most; ties go to the GPU listed first. :func:`explain_plan` replays that order over the plan's own numbers
and says, per agent, how much room its GPU had before and after, and how many GPUs could have taken it.
"""

from __future__ import annotations

from collections.abc import Collection

from colo import units
from colo.plan.types import Plan


def explain_plan(plan: Plan, *, reserve_per_gpu_bytes: int = 0, pinned: Collection[str] = ()) -> list[str]:
    """Lines explaining ``plan``: the rule, one line per agent in placement order, then per node totals.

    ``reserve_per_gpu_bytes`` is the policy's reserve (kept free on every GPU); ``pinned`` names agents whose
    ``gpu``/``node`` pin limited their choice. Free room is counted in limits (what MPS enforces).
    """
    slots = [g.gpu for g in plan.gpus]
    free = {g.key: max(g.memory_total_bytes - reserve_per_gpu_bytes, 0) for g in slots}
    clients = dict.fromkeys(free, 0)
    rule = "least free room that still fits (best fit)" if plan.placement == "binpack" else "most free room (spread)"
    lines = [
        f"placement: {plan.placement} — agents taken high priority first, then larger limits, then by name; "
        f"each goes to the GPU with the {rule}; ties go to the GPU listed first; at most "
        f"{plan.max_clients_per_gpu} MPS clients per GPU.",
    ]
    for i, a in enumerate(plan.agents, 1):
        head = f"{i:>3}. {a.name} ({a.priority}, limit {units.format_size(a.limit_bytes)})"
        if a.gpu is None:
            reason = next((u.reason for u in plan.unplaced if u.agent == a.name), "fits on no GPU")
            lines.append(f"{head}: NOT PLACED — {reason}")
            continue
        key = a.gpu.key
        fitting = [k for k in free if free[k] >= a.limit_bytes and clients[k] < plan.max_clients_per_gpu]
        before = free[key]
        free[key] -= a.limit_bytes
        clients[key] += 1
        why = "pinned" if a.name in pinned else f"{len(fitting)} of {len(free)} GPUs had room"
        lines.append(
            f"{head} -> {a.gpu.label}: {why}; free there {units.format_size(max(before, 0))} -> "
            f"{units.format_size(max(free[key], 0))}"
        )
    nodes: dict[str, list[int]] = {}
    for g in plan.gpus:
        row = nodes.setdefault(g.gpu.node, [0, 0, 0, 0])
        row[0] += 1
        row[1] += 1 if g.agents else 0
        row[2] += g.allocated_bytes
        row[3] += g.gpu.memory_total_bytes
    for node, (n_gpus, used, allocated, total) in sorted(nodes.items()):
        n_agents = sum(1 for a in plan.placed if a.gpu is not None and a.gpu.node == node)
        lines.append(
            f"node {node}: {n_agents} agents on {used} of {n_gpus} GPUs, "
            f"{units.format_size(allocated)} of {units.format_size(total)} allocated"
        )
    for f in plan.findings:
        lines.append(f"note: {f.agent}: {f.message}")
    return lines
