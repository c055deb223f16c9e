"""Which memory figure the planner uses for each model: measured > estimated > declared.

``colo plan --from-db`` (or ``policy.memory_source: db``) calls :func:`memory_for_plan`. A measured figure
is the NVML peak of the model's own process at its declared worst case (same dtype, batch, sequence, new
tokens); one from the GPU model being planned for wins over one from another GPU. An estimate comes from the
database (``colo estimate --save``) or is computed on the spot when PyTorch is installed. A model with none of
these keeps its declared ``memory``; with nothing at all it is left out and the planner names it.

Agents that load several models share one CUDA context: :func:`agent_memory_for_plan` gives per-agent
requirements (the agent's set measured together, else combined from per-model measurements, else
estimated) for a planner that takes per-agent figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from colo import units
from colo.errors import ColoError
from colo.memory.db import ModelDB, ModelEntry
from colo.memory.worst_case import WorstCase, agent_requests, model_request
from colo.plan.types import MemoryInputs, MemorySource, ModelMemory
from colo.spec.config import ColoConfig


@dataclass(frozen=True)
class MemoryRow:
    """Every figure known for one model (bytes; None when unknown) and the one the plan uses."""

    model: str
    declared_bytes: int | None
    measured_bytes: int | None
    estimated_bytes: int | None
    chosen: ModelMemory | None
    measured_gpu: str | None = None  # the GPU model of the measurement

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "declared_bytes": self.declared_bytes,
            "measured_bytes": self.measured_bytes,
            "estimated_bytes": self.estimated_bytes,
            "source": self.chosen.source if self.chosen else None,
            "requirement_bytes": self.chosen.requirement_bytes if self.chosen else None,
            "detail": self.chosen.detail if self.chosen else "",
        }


@dataclass(frozen=True)
class AgentMemory:
    """One agent's requirement (bytes) for its model set in one process, and where it came from."""

    agent: str
    requirement_bytes: int
    source: MemorySource
    detail: str


def _lookup(db: ModelDB, req: WorstCase, kind: str, gpu_name: str | None) -> ModelEntry | None:
    return db.lookup(
        req.model,
        dtype=req.dtype,
        batch_size=req.batch_size,
        seq_len=req.seq_len,
        new_tokens=req.new_tokens,
        kind="measured" if kind == "measured" else "estimated",
        gpu_name=gpu_name,
    )


def _shape_text(req: WorstCase) -> str:
    shape = f"{req.dtype} b{req.batch_size}×{req.seq_len}"
    return shape + (f"+{req.new_tokens}" if req.new_tokens else "")


def live_estimate(db: ModelDB, req: WorstCase, gpu_name: str | None) -> tuple[int, str] | None:
    """An estimate computed now: catalog models from their precomputed shapes (no torch needed), others from a
    meta-device build (None without torch/transformers, or for a model colo cannot resolve)."""
    from colo.memory.estimate import DEFAULT_OVERHEAD_BYTES, estimate

    overhead = db.overhead_for(gpu_name) or db.overhead_for(None)
    try:
        est = estimate(
            req,
            overhead_bytes=overhead[0] if overhead else DEFAULT_OVERHEAD_BYTES,
            overhead_source=overhead[1] if overhead else "default 680 MiB",
        )
    except ColoError:
        return None
    return est.nvml_peak_bytes, f"estimate {_shape_text(req)}, overhead {est.overhead_source}"


def memory_rows(
    config: ColoConfig, db: ModelDB, gpu_name: str | None = None, *, compute_estimates: bool = True
) -> list[MemoryRow]:
    """Declared, measured and estimated figures for every model of ``config``, and the chosen one."""
    rows = []
    for mid, spec in config.models.items():
        try:
            req = model_request(mid, spec)
        except ColoError:
            req = None
        measured = _lookup(db, req, "measured", gpu_name) if req else None
        est_entry = _lookup(db, req, "estimated", gpu_name) if req else None
        estimated: tuple[int, str] | None = None
        if est_entry is not None:
            estimated = (est_entry.nvml_peak_bytes, f"estimate from the database ({est_entry.provenance.date})")
        elif req is not None and measured is None and compute_estimates:
            estimated = live_estimate(db, req, gpu_name)
        chosen: ModelMemory | None = None
        if measured is not None and req is not None:
            p = measured.provenance
            chosen = ModelMemory(
                mid,
                measured.nvml_peak_bytes,
                "measured",
                f"NVML peak {units.format_size(measured.nvml_peak_bytes)} at {_shape_text(req)} on "
                f"{p.gpu or 'a GPU'} ({p.date[:10]}, {measured.weights} weights)",
            )
        elif estimated is not None:
            chosen = ModelMemory(mid, estimated[0], "estimated", estimated[1])
        elif spec.memory_bytes is not None:
            chosen = ModelMemory(mid, spec.memory_bytes, "declared", "declared in the configuration")
        rows.append(
            MemoryRow(
                model=mid,
                declared_bytes=spec.memory_bytes,
                measured_bytes=measured.nvml_peak_bytes if measured else None,
                estimated_bytes=estimated[0] if estimated else None,
                chosen=chosen,
                measured_gpu=(measured.provenance.gpu or "a GPU") if measured else None,
            )
        )
    return rows


def memory_for_plan(config: ColoConfig, db: ModelDB, gpu_name: str | None = None) -> dict[str, ModelMemory]:
    """Per-model requirements for :func:`colo.plan.plan`: measured > estimated > declared (bytes, NVML
    peak of the model's own process). Models with no figure at all are absent (the planner names them)."""
    return {r.model: r.chosen for r in memory_rows(config, db, gpu_name) if r.chosen is not None}


def agent_memory_for_plan(config: ColoConfig, db: ModelDB, gpu_name: str | None = None) -> dict[str, AgentMemory]:
    """Per-agent requirements, counting one CUDA context per agent process.

    For each agent: its model set measured together (``colo profile`` does this for every agent with more
    than one model) > combined from per-model measurements (largest overhead + every model's reserved
    weights + the largest transient) > estimated together > the sum of :func:`memory_for_plan`'s figures.
    Agents with a model that has no figure at all are absent.
    """
    per_model = memory_for_plan(config, db, gpu_name)
    out: dict[str, AgentMemory] = {}
    for name, agent in config.agents.items():
        try:
            reqs: tuple[WorstCase, ...] = agent_requests(config, name)
        except ColoError:  # a model colo cannot resolve: only declared figures can apply
            reqs = ()
        found = _measured_agent(db, name, reqs, gpu_name) if reqs else None
        if found is not None:
            out[name] = found
            continue
        if all(m in per_model for m in agent.models):
            total = sum(per_model[m].requirement_bytes for m in agent.models)
            sources = {per_model[m].source for m in agent.models}
            source: MemorySource = sources.pop() if len(sources) == 1 else "estimated"
            if len(agent.models) > 1 and source != "declared" and reqs:
                combined = _estimate_together(db, reqs, gpu_name)
                if combined is not None:
                    out[name] = AgentMemory(name, combined, "estimated", "model set estimated together")
                    continue
            out[name] = AgentMemory(name, total, source, "sum of the models' figures")
    return out


def _measured_agent(db: ModelDB, name: str, reqs: tuple[WorstCase, ...], gpu_name: str | None) -> AgentMemory | None:
    """The agent's set measured together, or combined from its models' own measurements, or None."""
    together = db.lookup_agent(name, tuple(r.shape for r in reqs), gpu_name=gpu_name)
    if together is not None:
        p = together.provenance
        detail = f"model set measured together on {p.gpu or 'a GPU'} ({p.date[:10]})"
        return AgentMemory(name, together.nvml_peak_bytes, "measured", detail)
    measured = [_lookup(db, r, "measured", gpu_name) for r in reqs]
    if len(measured) == 1 and measured[0] is not None:
        return AgentMemory(name, measured[0].nvml_peak_bytes, "measured", "the model's own measurement")
    ms = [m for m in measured if m is not None and m.reserved_peak_bytes is not None]
    if len(ms) != len(reqs):
        return None
    overhead = max(m.nvml_peak_bytes - (m.reserved_peak_bytes or 0) for m in ms)
    weights = sum(m.weights_bytes for m in ms)
    transient = max((m.reserved_peak_bytes or 0) - m.weights_bytes for m in ms)
    return AgentMemory(name, overhead + weights + transient, "measured", "combined from per-model measurements")


def _estimate_together(db: ModelDB, reqs: tuple[WorstCase, ...], gpu_name: str | None) -> int | None:
    from colo.memory.estimate import DEFAULT_OVERHEAD_BYTES, estimate_set

    overhead = db.overhead_for(gpu_name) or db.overhead_for(None)
    try:
        return estimate_set(
            list(reqs),
            overhead_bytes=overhead[0] if overhead else DEFAULT_OVERHEAD_BYTES,
        )
    except ColoError:
        return None


def plan_memory(config: ColoConfig, db: ModelDB, gpu_name: str | None = None) -> MemoryInputs:
    """Everything the planner needs from the database: per-model figures, and per-agent figures that count
    one CUDA context per agent process (see :func:`agent_memory_for_plan`). Pass it to ``plan(..., memory)``."""
    agents = {
        name: ModelMemory(name, a.requirement_bytes, a.source, a.detail)
        for name, a in agent_memory_for_plan(config, db, gpu_name).items()
    }
    return MemoryInputs(models=memory_for_plan(config, db, gpu_name), agent_requirements=agents)
