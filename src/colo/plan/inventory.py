"""GPU slots from a configured inventory, and agent pins resolved against slots. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from colo.errors import ConfigError, PlanError
from colo.plan.types import GpuSlot
from colo.spec.config import AgentSpec, ColoConfig


def inventory_slots(config: ColoConfig) -> list[GpuSlot]:
    """Expand ``gpus:`` rows into slots; indices count up per node across rows.

    Raises PlanError for ``gpus: auto`` (the caller must pass the real GPUs from NVML).
    """
    if config.gpus == "auto":
        raise PlanError(
            "gpus: auto needs the real GPUs, and none were given",
            hint="run where NVML sees the GPUs, or list an inventory under 'gpus:' to plan without one",
        )
    next_index: dict[str, int] = {}
    slots = []
    for row in config.gpus:
        for _ in range(row.count):
            i = next_index.get(row.node, 0)
            next_index[row.node] = i + 1
            slots.append(GpuSlot(row.node, i, row.name, row.memory_bytes, mps=row.mps))
    return slots


def pinned_candidates(name: str, agent: AgentSpec, slots: Sequence[GpuSlot]) -> list[int] | None:
    """Positions in ``slots`` an agent may use, or None when it is not pinned.

    ``gpu`` may be an index (on the agent's node, or the only node), ``"node:index"``, or a GPU UUID.
    Raises ConfigError naming the agent when the pin matches no GPU.
    """
    if agent.gpu is None and agent.node is None:
        return None
    nodes = sorted({s.node for s in slots})
    pos = list(range(len(slots)))
    if agent.node is not None:
        pos = [i for i in pos if slots[i].node == agent.node]
        if not pos:
            raise ConfigError(
                f"pinned to node {agent.node!r}, which has no GPUs (nodes: {', '.join(nodes)})",
                field=f"agents.{name}.node",
            )
    pin = agent.gpu
    if pin is None:
        return pos
    text = str(pin).strip()
    if text.upper().startswith(("GPU-", "MIG-")):
        match = [i for i in pos if slots[i].uuid == text]
    else:
        node: str | None = None
        idx_text = text
        if ":" in text:
            node, idx_text = text.rsplit(":", 1)
        if not idx_text.isdigit():
            raise ConfigError(
                f"gpu pin {pin!r} is not an index, 'node:index' or a GPU UUID", field=f"agents.{name}.gpu"
            )
        index = int(idx_text)
        if node is None and len({slots[i].node for i in pos}) > 1:
            raise ConfigError(
                f"gpu pin {pin!r} is ambiguous across nodes {', '.join(nodes)}",
                field=f"agents.{name}.gpu",
                hint="write 'node:index' or add 'node:' to the agent",
            )
        match = [i for i in pos if slots[i].index == index and (node is None or slots[i].node == node)]
    if not match:
        have = ", ".join(s.key for s in slots[:8]) + (" ..." if len(slots) > 8 else "")
        raise ConfigError(f"gpu pin {pin!r} matches no GPU (have: {have})", field=f"agents.{name}.gpu")
    return match
