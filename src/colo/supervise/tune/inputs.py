"""What ``colo tune`` reads before the pure proposal (:mod:`colo.supervise.tune.formula`): the plan of the config
(with the tuned limits now in force), the model database's worst-case figures, the tuned-limits file and
the usage history of the state dir; and :func:`write_tuned`, which records accepted proposals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from colo.errors import ColoError, SupervisorError
from colo.memory.db import ModelDB
from colo.memory.resolve import AgentMemory, agent_memory_for_plan
from colo.memory.worst_case import agent_requests
from colo.plan.types import AgentPlan
from colo.spec.config import ColoConfig
from colo.supervise import planning
from colo.supervise.planning import NodePlan
from colo.supervise.snapshots import Shape, UsageSample
from colo.supervise.statedir import StateDirPaths
from colo.supervise.store import Store
from colo.supervise.tune import limits_file
from colo.supervise.tune.formula import TUNE_ROUND_BYTES, AgentFacts, Proposal, TuneSettings


@dataclass(frozen=True)
class TuneInputs:
    """Everything :func:`colo.supervise.tune.formula.propose` needs, and the plan it came from."""

    planned: NodePlan
    facts: tuple[AgentFacts, ...]
    samples: tuple[UsageSample, ...]
    settings: TuneSettings
    state_dir: Path


def worst_shapes(config: ColoConfig, agent: str) -> tuple[Shape, ...]:
    """A built-in agent's worst-case request per model (a command agent: none; it reports no shapes)."""
    if config.agents[agent].command is not None:
        return ()
    try:
        cases = agent_requests(config, agent)
    except ColoError:  # a model colo cannot place: it cannot serve it either
        return ()
    return tuple(Shape(c.model, c.batch_size, c.seq_len, c.new_tokens) for c in cases)


def agent_facts(
    config: ColoConfig,
    placed: Sequence[AgentPlan],
    needs: Mapping[str, AgentMemory],
    entries: Mapping[str, limits_file.TunedEntry],
) -> tuple[AgentFacts, ...]:
    """Facts per placed agent (pure): its limit, worst-case shapes, need and profile, a limit it failed under."""
    out = []
    for ap in placed:
        assert ap.gpu is not None
        need = needs.get(ap.name)
        known = need is not None and need.source in ("measured", "estimated")
        entry = entries.get(ap.name)
        failed = entry.limit_bytes if entry is not None and entry.rolled_back_at is not None else None
        out.append(
            AgentFacts(
                agent=ap.name,
                gpu=ap.gpu.label,
                gpu_key=ap.gpu.key,
                limit_bytes=ap.limit_bytes,
                limit_source=ap.limit_source,
                worst_shapes=worst_shapes(config, ap.name),
                need_bytes=need.requirement_bytes if known and need is not None else None,
                need_source=f"{need.source}: {need.detail}" if known and need is not None else "",
                profiled_bytes=need.requirement_bytes if need is not None and need.source == "measured" else None,
                failed_limit_bytes=failed,
            )
        )
    return tuple(out)


def gather(config: ColoConfig, state_dir: Path, *, since_wall: float, store: Store | None = None) -> TuneInputs:
    """Read the plan, the model database, the tuned limits and the history (rows that ended at or after
    ``since_wall``). Raises SupervisorError when the state dir has no database (colo never ran there),
    ConfigError/PlanError when the config cannot be planned."""
    paths = StateDirPaths(state_dir)
    if store is None:
        store = Store.open_existing(paths.db)
        if store is None:
            raise SupervisorError(
                f"no usage history: {paths.db} does not exist (colo has not run with state dir {state_dir})",
                hint="run the agents with `colo up CONFIG` under their usual load first (or pass --state-dir)",
            )
    planned = planning.plan_config(config, state_dir=state_dir)
    mine, _ = planned.local()
    try:
        needs = agent_memory_for_plan(config, ModelDB.open_default(config), planning.memory_gpu_name(planned.slots))
    except ColoError:
        needs = {}
    entries = limits_file.load(paths.tuned_limits)
    facts = agent_facts(config, mine, needs, entries)
    samples = tuple(store.usage(since=since_wall))
    settings = TuneSettings(round_to_bytes=min(TUNE_ROUND_BYTES, max(config.policy.round_to_bytes, 1)))
    return TuneInputs(planned, facts, samples, settings, Path(state_dir))


def write_tuned(
    config: ColoConfig, state_dir: Path, proposals: Sequence[Proposal], *, now: float
) -> dict[str, limits_file.TunedEntry]:
    """Record every trusted proposal that changes a limit in ``<state_dir>/tuned_limits.json`` (atomically);
    other agents' entries stay. Returns the new entries. The previous limit kept is the one in force before
    the first tuning (so a rollback always returns to a limit the agent ran under)."""
    path = StateDirPaths(state_dir).tuned_limits
    entries = limits_file.load(path)
    new: dict[str, limits_file.TunedEntry] = {}
    for p in proposals:
        if not p.changes or p.proposed_bytes is None or p.basis_bytes is None:
            continue
        old = entries.get(p.agent)
        keep_previous = old is not None and old.rolled_back_at is None and p.current_source == "tuned"
        previous = old.previous_limit_bytes if keep_previous and old is not None else p.current_bytes
        new[p.agent] = limits_file.TunedEntry(
            limit_bytes=p.proposed_bytes,
            basis_bytes=p.basis_bytes,
            previous_limit_bytes=previous,
            key=limits_file.agent_key(config, p.agent),
            detail=p.detail(),
            tuned_at=now,
        )
    if new:
        limits_file.save(path, {**entries, **new})
    return new
