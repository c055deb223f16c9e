"""From model requirements to one agent's limit: requirement + margin, rounded up. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from colo import units
from colo.errors import PlanError
from colo.plan.types import ModelMemory, PolicyFinding
from colo.spec.config import ColoConfig, Margin


def declared_memory(config: ColoConfig) -> dict[str, ModelMemory]:
    """The models' declared ``memory`` values (models without one are absent)."""
    return {
        mid: ModelMemory(mid, spec.memory_bytes, "declared")
        for mid, spec in config.models.items()
        if spec.memory_bytes is not None
    }


def agent_models(config: ColoConfig, agent: str, memory: Mapping[str, ModelMemory]) -> tuple[ModelMemory, ...]:
    """The memory of each of ``agent``'s models; a model with no number is a PlanError naming it."""
    out = []
    for mid in config.agents[agent].models:
        mm = memory.get(mid)
        if mm is None:
            raise PlanError(
                f"model {mid!r} (used by agent {agent!r}) has no memory requirement",
                hint="declare `memory:` for it in colo.yaml, or run `colo profile`/`colo estimate` "
                "and plan with --from-db",
            )
        out.append(mm)
    return tuple(out)


def limit_for(requirement_bytes: int, margin: Margin, round_to_bytes: int) -> int:
    """THE limit formula: an MPS limit of ``round_up(requirement + margin(requirement), round_to)`` bytes."""
    return units.round_up(requirement_bytes + margin.margin_bytes(requirement_bytes), round_to_bytes)


def agent_limit(config: ColoConfig, agent: str, requirement_bytes: int) -> tuple[int, int]:
    """``(margin_bytes, limit_bytes)`` of ``agent`` (:func:`limit_for`); the margin includes the rounding."""
    limit = limit_for(requirement_bytes, config.margin_for(agent), config.policy.round_to_bytes)
    return limit - requirement_bytes, limit


def margin_findings(config: ColoConfig, requirements: Mapping[str, int]) -> list[PolicyFinding]:
    """Agents whose own margin gives less than the policy's margin would (a warning, not an error)."""
    findings = []
    for name, agent in config.agents.items():
        if agent.margin is None or name not in requirements:
            continue
        req = requirements[name]
        own = agent.margin.margin_bytes(req)
        policy = config.policy.margin.margin_bytes(req)
        if own < policy:
            pct = 100.0 * own / req if req else 0.0
            findings.append(
                PolicyFinding(
                    name,
                    f"margin {units.format_size(own)} on {units.format_size(req)} is {pct:.0f}%, below the "
                    f"policy's {config.policy.margin.describe()} ({units.format_size(policy)})",
                )
            )
    return findings
