"""Which GPUs this machine plans with, and which planned agents it runs.

``gpus: auto``: the GPUs NVML sees. An inventory: its slots, where the GPUs of this node get the UUID of the
NVML GPU with the same index (so the newsroom's "RTX 3090, index 0" runs on whatever GPU 0 is here).
Agents placed on other nodes are left to those nodes; agents placed on an inventory GPU this machine does
not have are reported, not run.
"""

from __future__ import annotations

from dataclasses import replace

from colo.errors import PlanError
from colo.gpu.nvml import GpuBackend, slots_from_snapshots
from colo.plan import inventory_slots
from colo.plan.types import AgentPlan, GpuSlot, Plan, Unplaced
from colo.spec.config import ColoConfig


def local_node(config: ColoConfig, node: str | None) -> str:
    """``node`` (``--node``), else the inventory's only node, else ``local``. Raises PlanError if ambiguous."""
    if node:
        return node
    if config.gpus != "auto":
        nodes = sorted({row.node for row in config.gpus})
        if len(nodes) == 1:
            return nodes[0]
        if "local" in nodes:
            return "local"
        raise PlanError(
            f"the inventory has several nodes ({', '.join(nodes)}) and none is 'local'",
            hint="say which one this machine is with --node NAME",
        )
    return "local"


def gpu_slots(config: ColoConfig, backend: GpuBackend | None, node: str) -> tuple[list[GpuSlot], list[str]]:
    """GPU slots to plan with, and warnings. Raises PlanError (auto without GPUs), GpuError."""
    warnings: list[str] = []
    if config.gpus == "auto":
        if backend is None:
            raise PlanError("gpus: auto needs the real GPUs, and none were given")
        return slots_from_snapshots(backend.gpus(), node=node), warnings
    slots = inventory_slots(config)
    if backend is None:
        warnings.append("no NVIDIA GPU visible: agents run without GPU placement or MPS")
        return slots, warnings
    real = {s.index: s for s in backend.gpus()}
    out = []
    for s in slots:
        if s.node != node:
            out.append(s)
            continue
        snap = real.get(s.index)
        if snap is None:
            warnings.append(f"inventory GPU {s.key} is not on this machine (NVML sees {len(real)} GPU(s))")
            out.append(s)
        else:
            out.append(replace(s, uuid=snap.uuid))
    return out, warnings


def split_local(p: Plan, node: str, *, have_uuids: bool) -> tuple[list[AgentPlan], list[Unplaced]]:
    """Placed agents this node runs (plan order = priority order), and the agents it cannot run (the plan's
    unplaced ones, and, when this machine's GPUs are known, those placed on a GPU it does not have)."""
    mine: list[AgentPlan] = []
    missing: list[Unplaced] = list(p.unplaced)
    for ap in p.placed:
        assert ap.gpu is not None
        if ap.gpu.node != node:
            continue
        if have_uuids and ap.gpu.uuid is None:
            missing.append(Unplaced(ap.name, ap.priority, ap.limit_bytes, f"{ap.gpu.key} is not on this machine"))
            continue
        mine.append(ap)
    return mine, missing
