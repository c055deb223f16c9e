"""What a plan is: frozen dataclasses, built by :func:`colo.plan.plan`, read by everything after it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from colo.spec.config import MpsMode, Priority

MemorySource = Literal["declared", "measured", "estimated", "observed"]
#: How an agent's memory limit is held to: by MPS (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``), by the built-in
#: agent capping PyTorch's allocator (its GPU runs without MPS), or not at all (a command agent without MPS).
Enforcement = Literal["mps-pinned", "allocator-cap", "none"]


class LimitSource(StrEnum):
    """Where an agent's limit comes from: the policy (requirement + margin), ``colo tune`` (a tuned limit in
    the state dir's ``tuned_limits.json``), or the policy again because the agent ran out of memory under its
    tuned limit (the entry is marked rolled back)."""

    POLICY = "policy"
    TUNED = "tuned"
    ROLLED_BACK = "rolled back"


@dataclass(frozen=True, order=True)
class GpuSlot:
    """One GPU the planner may place agents on. ``index`` is the NVML index on its node."""

    node: str
    index: int
    name: str = field(compare=False)
    memory_total_bytes: int = field(compare=False)
    uuid: str | None = field(default=None, compare=False)
    mps: MpsMode | None = field(default=None, compare=False)  # the inventory row's override of policy.mps

    @property
    def key(self) -> str:
        """Stable id: ``"local:0"``, ``"node-b:3"``."""
        return f"{self.node}:{self.index}"

    @property
    def label(self) -> str:
        """Short form for tables: ``gpu0`` on the default node, else ``node-b/gpu3``."""
        return f"gpu{self.index}" if self.node == "local" else f"{self.node}/gpu{self.index}"


@dataclass(frozen=True)
class ModelMemory:
    """What one model needs on the GPU (bytes) and where the number came from."""

    model: str
    requirement_bytes: int
    source: MemorySource = "declared"
    detail: str = ""


@dataclass(frozen=True)
class MemoryInputs:
    """What the planner needs to know about memory.

    ``models``: each model's requirement. ``agent_requirements``: agents whose model set was measured or
    estimated as one process (bytes): that figure replaces the sum of the models', which would count one
    CUDA context per model instead of one per process. ``tuned``: agents whose limit ``colo tune`` set (it
    replaces requirement + margin).
    """

    models: Mapping[str, ModelMemory]
    agent_requirements: Mapping[str, ModelMemory] = field(default_factory=dict)
    tuned: Mapping[str, TunedLimit] = field(default_factory=dict)


@dataclass(frozen=True)
class TunedLimit:
    """A limit ``colo tune`` set for an agent from its usage history: ``limit_bytes`` covers ``basis_bytes``
    (the larger of its observed peak and its profiled worst case) plus a margin; ``detail`` says from what."""

    agent: str
    limit_bytes: int
    basis_bytes: int
    detail: str = ""
    rolled_back: bool = False  # it ran out of memory under this limit: the policy's limit is back in force


@dataclass(frozen=True)
class AgentPlan:
    """One agent's allocation. ``gpu`` is None when it was left out (see Plan.unplaced)."""

    name: str
    models: tuple[ModelMemory, ...]
    priority: Priority
    requirement_bytes: int
    margin_bytes: int
    limit_bytes: int
    client_priority: int
    active_thread_pct: int
    gpu: GpuSlot | None
    margin_policy: str = ""
    requirement_source: str = "sum of the models"
    enforcement: Enforcement | None = None  # None: left out (no GPU)

    @property
    def mps(self) -> bool:
        """Its GPU runs MPS (the agent is an MPS client under its pinned limit)."""
        return self.enforcement == "mps-pinned"
    limit_source: LimitSource = LimitSource.POLICY

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.model for m in self.models)


@dataclass(frozen=True)
class Unplaced:
    """An agent that fits on no GPU, with the numbers that say why."""

    agent: str
    priority: Priority
    limit_bytes: int
    reason: str


@dataclass(frozen=True)
class GpuSummary:
    """Per-GPU totals. utilisation = allocated / memory; efficiency = calculated / allocated."""

    gpu: GpuSlot
    agents: tuple[str, ...]
    calculated_bytes: int
    margin_bytes: int
    allocated_bytes: int
    mps: bool = False
    mps_mode: MpsMode = "auto"
    mps_reason: str = ""

    @property
    def free_bytes(self) -> int:
        return self.gpu.memory_total_bytes - self.allocated_bytes

    @property
    def utilization_pct(self) -> float:
        return 100.0 * self.allocated_bytes / self.gpu.memory_total_bytes if self.gpu.memory_total_bytes else 0.0

    @property
    def efficiency_pct(self) -> float:
        return 100.0 * self.calculated_bytes / self.allocated_bytes if self.allocated_bytes else 0.0


@dataclass(frozen=True)
class Summary:
    """Totals over placed agents, derived from the rows (never written by hand)."""

    total_agents: int
    calculated_bytes: int
    margin_bytes: int
    allocated_bytes: int
    gpu_memory_bytes: int

    @property
    def efficiency_pct(self) -> float:
        return 100.0 * self.calculated_bytes / self.allocated_bytes if self.allocated_bytes else 0.0

    @property
    def utilization_pct(self) -> float:
        return 100.0 * self.allocated_bytes / self.gpu_memory_bytes if self.gpu_memory_bytes else 0.0


@dataclass(frozen=True)
class PolicyFinding:
    """Something to know about a valid plan: a margin below the policy's (a warning), a declared ``memory``
    below what the model's worst case needs (``topic`` "memory"; an error when the agent will run out)."""

    agent: str
    message: str
    severity: Literal["warning", "error"] = "warning"
    topic: str = "margin"


@dataclass(frozen=True)
class Plan:
    """The whole allocation: agents in placement order, GPUs, what was left out, and totals."""

    agents: tuple[AgentPlan, ...]
    gpus: tuple[GpuSummary, ...]
    unplaced: tuple[Unplaced, ...]
    summary: Summary
    placement: str
    max_clients_per_gpu: int
    findings: tuple[PolicyFinding, ...] = ()

    def gpu(self, slot: GpuSlot) -> GpuSummary:
        """The summary of GPU ``slot``. Raises KeyError."""
        for g in self.gpus:
            if g.gpu == slot:
                return g
        raise KeyError(slot.key)

    def mps_gpus(self) -> tuple[GpuSlot, ...]:
        """The GPUs that run MPS (a daemon, agents as its clients)."""
        return tuple(g.gpu for g in self.gpus if g.mps)

    def mps_lines(self) -> list[str]:
        """One line per GPU: whether it runs MPS and why (``colo plan``, ``colo validate``)."""
        return [f"{g.gpu.label}: {g.mps_reason}" for g in self.gpus]

    def agent(self, name: str) -> AgentPlan:
        for a in self.agents:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def placed(self) -> tuple[AgentPlan, ...]:
        return tuple(a for a in self.agents if a.gpu is not None)

    @property
    def complete(self) -> bool:
        return not self.unplaced
