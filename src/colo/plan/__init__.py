"""Pure planning: model memory -> per-agent MPS limits -> placement on GPUs -> summary."""

from colo.plan.inventory import inventory_slots
from colo.plan.planner import plan, require_complete
from colo.plan.types import AgentPlan, GpuSlot, GpuSummary, MemoryInputs, ModelMemory, Plan, Summary, Unplaced

__all__ = [
    "AgentPlan",
    "GpuSlot",
    "GpuSummary",
    "MemoryInputs",
    "ModelMemory",
    "Plan",
    "Summary",
    "Unplaced",
    "inventory_slots",
    "plan",
    "require_complete",
]
