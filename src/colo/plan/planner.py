"""``plan(config, gpus) -> Plan``: the pure allocation planner (no I/O, no clock, no randomness)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from colo.plan import mps as mps_policy
from colo.plan.inventory import pinned_candidates
from colo.plan.limits import agent_limit, agent_models, declared_memory, margin_findings
from colo.plan.placement import Request, place, placement_order
from colo.plan.types import (
    AgentPlan,
    GpuSlot,
    GpuSummary,
    LimitSource,
    MemoryInputs,
    ModelMemory,
    Plan,
    PolicyFinding,
    Summary,
    TunedLimit,
    Unplaced,
)
from colo.spec.config import ColoConfig


def plan(
    config: ColoConfig,
    gpus: Sequence[GpuSlot],
    memory: Mapping[str, ModelMemory] | MemoryInputs | None = None,
    *,
    mps_off: str | None = None,
    keep: Mapping[str, str] | None = None,
) -> Plan:
    """Turn model memory into per-agent MPS limits and place the agents on ``gpus``.

    ``memory`` maps model id -> requirement (measured, estimated or declared), or is a
    :class:`MemoryInputs` that also gives whole-agent requirements; by default the models' declared ``memory``. Agents that fit nowhere are returned in ``Plan.unplaced`` with the reason; call
    :func:`require_complete` to make that an error.

    Each GPU's MPS decision (``policy.mps``, a row's ``gpus[].mps``; see :mod:`colo.plan.mps`) is in
    ``Plan.gpus`` and each agent's ``enforcement``; ``mps_off`` (e.g. ``"--no-mps"``) turns MPS off
    everywhere for this run and says why. ``keep`` maps agents to the GPU (``GpuSlot.key``) they run on now
    (a running colo planning again): each stays there while its pin allows it and it fits
    (:mod:`colo.plan.placement`); a key of no slot is ignored.

    Raises PlanError for a model without any memory figure, ConfigError for a pin that matches no GPU.
    """
    agent_req: Mapping[str, ModelMemory] = {}
    tuned: Mapping[str, TunedLimit] = {}
    if isinstance(memory, MemoryInputs):
        agent_req, tuned = memory.agent_requirements, memory.tuned
        memory = memory.models
    mem = dict(declared_memory(config)) if memory is None else dict(memory)
    pol = config.policy
    rows: dict[str, tuple[tuple[ModelMemory, ...], int, int, int]] = {}
    sources: dict[str, str] = {}
    limit_sources: dict[str, LimitSource] = {}
    requests = []
    position = {g.key: i for i, g in enumerate(gpus)}
    for name, agent in config.agents.items():
        whole = agent_req.get(name)
        models = agent_models(config, name, mem) if whole is None else _models_or_whole(config, name, mem, whole)
        requirement = sum(m.requirement_bytes for m in models) if whole is None else whole.requirement_bytes
        margin, limit = agent_limit(config, name, requirement)
        sources[name] = "sum of the models" if whole is None else f"{whole.source}: {whole.detail}"
        t = tuned.get(name)
        if t is not None and t.rolled_back:  # it ran out of memory under its tuned limit: the policy's is back
            limit_sources[name] = LimitSource.ROLLED_BACK
        elif t is not None:  # colo tune: the observed basis and the limit it chose replace requirement + margin
            requirement, limit = t.basis_bytes, t.limit_bytes
            margin = limit - requirement
            sources[name] = f"observed: {t.detail}" if t.detail else "observed"
            limit_sources[name] = LimitSource.TUNED
        rows[name] = (models, requirement, margin, limit)
        cand = pinned_candidates(name, agent, gpus)
        stay = position.get((keep or {}).get(name, ""))
        requests.append(Request(name, agent.priority, limit, None if cand is None else tuple(cand), stay))

    capacity = [max(g.memory_total_bytes - pol.reserve_per_gpu_bytes, 0) for g in gpus]
    outcome = place(
        requests,
        capacity,
        [g.label for g in gpus],
        strategy=pol.placement,
        max_clients=pol.max_clients_per_gpu,
        allow_oversubscription=pol.allow_oversubscription,
    )

    counts = [0] * len(gpus)
    for at in outcome.placed.values():
        counts[at] += 1
    decided = [
        mps_policy.decide(g.mps or pol.mps, counts[i], forced_off=mps_off) for i, g in enumerate(gpus)
    ]
    agents: list[AgentPlan] = []
    unplaced: list[Unplaced] = []
    per_gpu: dict[int, list[AgentPlan]] = {i: [] for i in range(len(gpus))}
    for req in placement_order(requests):
        spec = config.agents[req.name]
        models, requirement, margin, limit = rows[req.name]
        pclass = pol.priorities[spec.priority]
        pos = outcome.placed.get(req.name)
        ap = AgentPlan(
            name=req.name,
            models=models,
            priority=spec.priority,
            requirement_bytes=requirement,
            margin_bytes=margin,
            limit_bytes=limit,
            client_priority=pclass.client_priority,
            active_thread_pct=pclass.active_thread_pct,
            gpu=gpus[pos] if pos is not None else None,
            margin_policy=config.margin_for(req.name).describe(),
            requirement_source=sources[req.name],
            enforcement=None if pos is None else mps_policy.enforcement(decided[pos][0], spec.command is None),
            limit_source=limit_sources.get(req.name, LimitSource.POLICY),
        )
        agents.append(ap)
        if pos is None:
            unplaced.append(Unplaced(req.name, spec.priority, limit, outcome.refused[req.name]))
        else:
            per_gpu[pos].append(ap)

    summaries = tuple(
        GpuSummary(
            gpu=g,
            agents=tuple(a.name for a in per_gpu[i]),
            calculated_bytes=sum(a.requirement_bytes for a in per_gpu[i]),
            margin_bytes=sum(a.margin_bytes for a in per_gpu[i]),
            allocated_bytes=sum(a.limit_bytes for a in per_gpu[i]),
            mps=decided[i][0],
            mps_mode=g.mps or pol.mps,
            mps_reason=decided[i][1],
        )
        for i, g in enumerate(gpus)
    )
    placed = [a for a in agents if a.gpu is not None]
    summary = Summary(
        total_agents=len(placed),
        calculated_bytes=sum(a.requirement_bytes for a in placed),
        margin_bytes=sum(a.margin_bytes for a in placed),
        allocated_bytes=sum(a.limit_bytes for a in placed),
        gpu_memory_bytes=sum(g.memory_total_bytes for g in gpus),
    )
    findings = margin_findings(config, {n: r[1] for n, r in rows.items()})
    findings += [
        PolicyFinding(n, "placed past its GPU's free memory (policy.allow_oversubscription)")
        for n in outcome.oversubscribed
    ]
    return Plan(
        agents=tuple(agents),
        gpus=summaries,
        unplaced=tuple(unplaced),
        summary=summary,
        placement=pol.placement,
        max_clients_per_gpu=pol.max_clients_per_gpu,
        findings=tuple(sorted(findings, key=lambda f: f.agent)),
    )


def _models_or_whole(
    config: ColoConfig, agent: str, memory: Mapping[str, ModelMemory], whole: ModelMemory
) -> tuple[ModelMemory, ...]:
    """The agent's per-model figures for display; a model without one is shown with 0 (the whole counts)."""
    return tuple(memory.get(m) or ModelMemory(m, 0, whole.source, "in the agent's figure") for m in config.agents[agent].models)


def require_complete(p: Plan) -> Plan:
    """Return ``p`` if every agent was placed; else raise DoesNotFitError listing each refusal."""
    from colo.errors import DoesNotFitError

    if p.unplaced:
        reasons = "; ".join(u.reason for u in p.unplaced)
        raise DoesNotFitError(
            f"{len(p.unplaced)} agent(s) fit on no GPU: {reasons}",
            agents=tuple(u.agent for u in p.unplaced),
            hint="lower margins, add GPUs, or set policy.allow_oversubscription",
        )
    return p
