"""What ``colo tune`` reads before the pure proposal (:mod:`colo.supervise.tune.formula`): the plan of the config
(with the tuned limits now in force), the model database's worst-case figures, the tuned-limits file and
the usage history of the state dir; and what ``colo tune --apply`` records: :class:`TunedChange` (one
accepted proposal, also what it sends to a running orchestrator's ``POST /tune``) and :func:`write_tuned`
(under the tuned-limits file's lock: the running orchestrator calls it, or ``colo tune --apply`` when none
runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo.errors import ColoError, ConfigError, SupervisorError
from colo.memory.db import ModelDB
from colo.memory.resolve import AgentMemory, agent_memory_for_plan
from colo.memory.worst_case import agent_requests
from colo.plan.types import AgentPlan, LimitSource
from colo.spec.config import ColoConfig
from colo.supervise import planning
from colo.supervise.planning import NodePlan
from colo.supervise.snapshots import Shape, UsageSample
from colo.supervise.statedir import StateDirPaths
from colo.supervise.store import Store
from colo.supervise.tune import limits_file
from colo.supervise.tune.formula import TUNE_ROUND_BYTES, AgentFacts, NeedSource, Proposal, TuneSettings

#: The model database's sources that give a worst case's need.
NEED_SOURCES = {"measured": NeedSource.MEASURED, "estimated": NeedSource.ESTIMATED}


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
        source = NEED_SOURCES.get(need.source, NeedSource.NONE) if need is not None else NeedSource.NONE
        known = need is not None and source is not NeedSource.NONE
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
                need_source=source,
                need_detail=need.detail if known and need is not None else "",
                profiled_bytes=need.requirement_bytes if need is not None and source is NeedSource.MEASURED else None,
                failed_limit_bytes=failed,
            )
        )
    return tuple(out)


def gather(config: ColoConfig, state_dir: Path, *, since_wall: float, store: Store | None = None) -> TuneInputs:
    """Read the plan (each agent kept on the GPU the store says colo runs it on), the model database, the tuned
    limits and the history (rows that ended at or after ``since_wall``). Raises SupervisorError when the state
    dir has no database (colo never ran there), ConfigError/PlanError when the config cannot be planned."""
    paths = StateDirPaths(state_dir)
    if store is None:
        store = Store.open_existing(paths.db)
        if store is None:
            raise SupervisorError(
                f"no usage history: {paths.db} does not exist (colo has not run with state dir {state_dir})",
                hint="run the agents with `colo up CONFIG` under their usual load first (or pass --state-dir)",
            )
    # where colo runs (or last ran) each agent: an apply keeps agents on their GPUs, so a fresh plan may differ
    ran_on = {r.status.name: r.status.gpu for r in store.agents() if r.status.gpu}
    planned = planning.plan_config(config, state_dir=state_dir, keep=ran_on)
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


@dataclass(frozen=True)
class TunedChange:
    """One accepted proposal to record: the agent's new limit and its basis, the limit in force when it was
    proposed (and where that came from), and how it was derived (``detail``)."""

    agent: str
    limit_bytes: int
    basis_bytes: int
    current_bytes: int
    current_source: LimitSource
    detail: str

    @staticmethod
    def accepted(proposals: Sequence[Proposal]) -> tuple[TunedChange, ...]:
        """The trusted proposals that change a limit."""
        return tuple(
            TunedChange(p.agent, p.proposed_bytes, p.basis_bytes, p.current_bytes, p.current_source, p.detail())
            for p in proposals
            if p.changes and p.proposed_bytes is not None and p.basis_bytes is not None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "limit_bytes": self.limit_bytes, "basis_bytes": self.basis_bytes,
            "current_bytes": self.current_bytes, "current_source": self.current_source.value, "detail": self.detail,
        }

    @staticmethod
    def from_dict(d: Any, source: str = "<request body>") -> TunedChange:
        """Raises ConfigError naming the field that is missing or of the wrong kind."""
        if not isinstance(d, Mapping):
            raise ConfigError("a tuned change must be an object", source=source)
        sizes = ("limit_bytes", "basis_bytes", "current_bytes")
        for key in sizes:
            if not isinstance(d.get(key), int) or isinstance(d.get(key), bool) or d[key] <= 0:
                raise ConfigError(f"{key}: {d.get(key)!r} is not a positive number of bytes", source=source, field=key)
        if not isinstance(d.get("agent"), str) or not d["agent"]:
            raise ConfigError(f"agent: {d.get('agent')!r} is not an agent name", source=source, field="agent")
        if not isinstance(d.get("detail", ""), str):
            raise ConfigError(f"detail: {d['detail']!r} is not text", source=source, field="detail")
        try:
            current = LimitSource(str(d.get("current_source")))
        except ValueError as exc:
            raise ConfigError(
                f"current_source: {d.get('current_source')!r} is not one of "
                + ", ".join(s.value for s in LimitSource), source=source, field="current_source",
            ) from exc
        return TunedChange(
            d["agent"], d["limit_bytes"], d["basis_bytes"], d["current_bytes"], current, d.get("detail", "")
        )


def write_tuned(
    config: ColoConfig, state_dir: Path, changes: Sequence[TunedChange], *, now: float
) -> dict[str, limits_file.TunedEntry]:
    """Record ``changes`` in ``<state_dir>/tuned_limits.json`` — read, changed and written under the file's
    lock, so a rollback the orchestrator records at the same time is kept; other agents' entries stay.
    Returns the new entries. The previous limit kept is the one in force before the first tuning (so a
    rollback always returns to a limit the agent ran under). Raises ConfigError (a corrupt file; an agent
    ``config`` does not have)."""
    unknown = [c.agent for c in changes if c.agent not in config.agents]
    if unknown:
        raise ConfigError(
            f"no agent {', '.join(map(repr, unknown))} in the configuration in force",
            hint="tune with the colo.yaml the agents run with",
        )
    new: dict[str, limits_file.TunedEntry] = {}

    def change(entries: dict[str, limits_file.TunedEntry]) -> dict[str, limits_file.TunedEntry]:
        for c in changes:
            old = entries.get(c.agent)
            keep_previous = old is not None and old.rolled_back_at is None and c.current_source is LimitSource.TUNED
            previous = old.previous_limit_bytes if keep_previous and old is not None else c.current_bytes
            new[c.agent] = limits_file.TunedEntry(
                limit_bytes=c.limit_bytes,
                basis_bytes=c.basis_bytes,
                previous_limit_bytes=previous,
                key=limits_file.agent_key(config, c.agent),
                detail=c.detail,
                tuned_at=now,
            )
        return {**entries, **new}

    if changes:
        limits_file.update(StateDirPaths(state_dir).tuned_limits, change)
    return new
