"""The one planning pipeline: (config, GPUs, model database) -> the plan, and the part this node runs.

Every command that needs a plan gets it here — ``colo plan``, ``colo validate``, ``colo up`` / ``colo apply``
(the orchestrator), ``colo serve``, ``colo mps env|start``, ``colo render``, ``colo capacity`` — so they can
never disagree about an agent's limit or GPU (``tests/unit/supervise/test_supervise_planning_agreement.py``
proves it).

The steps, each a function below:

1. **which node** this machine is (:func:`local_node`: ``--node``, the inventory's only node, else ``local``);
2. **GPU slots** (:func:`gpu_slots`): ``gpus: auto`` -> the GPUs NVML sees (:func:`slots_from_snapshots`); an
   inventory -> its slots, where this node's GPUs get the UUID of the NVML GPU with the same index (so the
   newsroom's "RTX 3090, index 0" runs on whatever GPU 0 is here);
3. **model memory** (:func:`memory_inputs`): declared ``memory`` (``memory_source: declared``), or measured >
   estimated > declared from the model database for the GPU model planned for (``memory_source: db`` or
   ``--from-db``);
4. **the pure planner** (:func:`colo.plan.plan`);
5. **the local split** (:meth:`NodePlan.local`): agents placed on other nodes are left to those nodes; agents
   placed on an inventory GPU this machine does not have are reported, not run.

A running colo takes every plan from :func:`plan_run` — ``colo up``, ``colo apply``, ``POST /apply``, a
reload (SIGHUP) and a tuned-limit rollback alike: the whole pipeline with the state dir (its tuned limits
count), ``policy.mps`` as the run says, and the predicted-out-of-memory refusal (:func:`refuse_predicted_oom`)
unless forced. Once agents run, it plans with their placement kept (:func:`placement_of`): an apply moves only
the agents a pin moves (or that no longer fit where they are), never the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from colo import units
from colo.errors import ColoError, GpuError, PlanError
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend, GpuSnapshot
from colo.memory.db import ModelDB
from colo.memory.resolve import agent_memory_for_plan, memory_rows, plan_memory
from colo.memory.worst_case import WorstCase, model_request
from colo.plan import inventory_slots, plan
from colo.plan.limits import declared_memory
from colo.plan.types import AgentPlan, GpuSlot, MemoryInputs, ModelMemory, Plan, PolicyFinding, TunedLimit, Unplaced
from colo.spec.config import ColoConfig, MpsMode
from colo.supervise.agent import AgentSetup
from colo.supervise.agent_setup import agent_setup
from colo.supervise.statedir import StateDirPaths, resolve_state_dir
from colo.supervise.tune import limits_file


def local_node(config: ColoConfig, node: str | None = None) -> str:
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


def slots_from_snapshots(snaps: Iterable[GpuSnapshot], node: str = "local") -> list[GpuSlot]:
    """GPUs found by NVML as planner slots (``gpus: auto``), UUID filled, in index order."""
    return [
        GpuSlot(node=node, index=s.index, name=s.name, memory_total_bytes=s.memory_total_bytes, uuid=s.uuid)
        for s in sorted(snaps, key=lambda s: s.index)
    ]


def read_gpus() -> list[GpuSnapshot] | None:
    """The GPUs NVML sees now, or None when NVML cannot be read here (no driver, no GPU, no pynvml)."""
    try:
        from colo.gpu.nvml import NvmlBackend

        return list(NvmlBackend().gpus())
    except (ColoError, OSError, ImportError):
        return None


def open_backend(config: ColoConfig) -> GpuBackend | None:
    """NVML on this machine (read once to be sure it answers), or None when it cannot be read here. Raises
    PlanError for ``gpus: auto``, which needs it."""
    try:
        from colo.gpu.nvml import NvmlBackend

        backend = NvmlBackend()
        backend.gpus()
        return backend
    except (GpuError, ImportError) as exc:
        if config.gpus == "auto":
            raise PlanError(
                f"gpus: auto, but the GPUs cannot be read ({exc})",
                hint="run where the NVIDIA driver is loaded, or list an inventory under 'gpus:'",
            ) from exc
        return None


def gpu_slots(
    config: ColoConfig, gpus: Sequence[GpuSnapshot] | None, node: str
) -> tuple[list[GpuSlot], list[str]]:
    """GPU slots to plan with, and warnings. ``gpus``: NVML's GPUs on this machine, None when unknown.

    Raises PlanError for ``gpus: auto`` without GPUs.
    """
    warnings: list[str] = []
    if config.gpus == "auto":
        if gpus is None:
            raise PlanError(
                "gpus: auto needs the real GPUs, and none can be read here",
                hint="run where the NVIDIA driver is loaded (try `nvidia-smi`), or list an inventory under 'gpus:'",
            )
        return slots_from_snapshots(gpus, node=node), warnings
    slots = inventory_slots(config)
    if gpus is None:
        return slots, warnings
    real = {s.index: s for s in gpus}
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


def memory_gpu_name(slots: Sequence[GpuSlot]) -> str | None:
    """The GPU model whose measurements the model database prefers: the first slot's name."""
    return slots[0].name if slots else None


def memory_inputs(
    config: ColoConfig,
    slots: Sequence[GpuSlot],
    *,
    from_db: bool = False,
    db: ModelDB | str | Path | None = None,
    state_dir: str | Path | None = None,
) -> MemoryInputs | None:
    """Model memory for the planner: measured > estimated > declared from the model database (``db``: a
    database, a file, or None for the state dir's) for the GPU model of ``slots``, when ``from_db`` or
    ``policy.memory_source: db``; else None (the models' declared ``memory``). Agents ``colo tune`` set a
    limit for in ``state_dir`` (None: the config's) get it (:func:`tuned_limits`).

    Agents whose models were measured (or estimated) together get that one figure: one CUDA context per
    process, not one per model. Raises ConfigError for a corrupt database file.
    """
    base = None
    if from_db or config.policy.memory_source == "db":
        base = plan_memory(config, _open_db(config, db), memory_gpu_name(slots))
    limits = tuned_limits(config, state_dir)
    if not limits:
        return base
    if base is None:
        return MemoryInputs(declared_memory(config), {}, limits)
    return replace(base, tuned=limits)


def tuned_limits(config: ColoConfig, state_dir: str | Path | None = None) -> dict[str, TunedLimit]:
    """The limits ``colo tune --apply`` set in the state dir (``tuned_limits.json``) that still apply to
    ``config`` (see :mod:`colo.supervise.tune.limits_file`). Raises ConfigError for a corrupt file."""
    return limits_file.applicable(config, limits_file.load(StateDirPaths(resolve_state_dir(config, state_dir)).tuned_limits))


def _open_db(config: ColoConfig, db: ModelDB | str | Path | None) -> ModelDB:
    if isinstance(db, ModelDB):
        return db
    return ModelDB.open(db) if db is not None else ModelDB.open_default(config)


def model_requirement(
    config: ColoConfig, model: str, *, from_db: bool = False, db: ModelDB | str | Path | None = None
) -> ModelMemory | None:
    """One model's requirement as the plan of ``config`` counts it (``colo capacity --config``): from the
    model database for the inventory's GPU model when the policy (or ``from_db``) says so, else declared.
    None when the plan has no figure for it."""
    slots = inventory_slots(config) if config.gpus != "auto" else []
    mem = memory_inputs(config, slots, from_db=from_db, db=db)
    if mem is not None:
        return mem.models.get(model)
    return declared_memory(config).get(model)


class PredictedOutOfMemory(PlanError):
    """The plan gives an agent a limit below what its models' worst case needs (``colo up``, ``colo apply``,
    ``POST /apply`` or a reload without force)."""

    exit_code = 2


def _gib_text(value_bytes: int) -> str:
    gib = value_bytes / units.GIB
    return f"{gib:.2f}".rstrip("0").rstrip(".") + " GiB" if gib < 1 else f"{gib:.1f} GiB"


def _shape_text(case: WorstCase) -> str:
    return f"{case.batch_size} × {case.seq_len}" + (f" + {case.new_tokens} new tokens" if case.new_tokens else "")


def memory_findings(
    config: ColoConfig, p: Plan, slots: Sequence[GpuSlot], db: ModelDB | str | Path | None = None
) -> list[PolicyFinding]:
    """Where the plan trusts a declared ``memory`` that the model's worst case exceeds, by the model database
    (measured on the GPU model planned for, else on another) or, failing that, colo's estimate (catalog
    models need no torch). An error when the agent's need (its models together, one CUDA context) passes its
    limit — it will run out of memory — else a warning (only the margin covers it). Agents planned from
    measured or estimated figures are not second-guessed."""
    try:
        database = _open_db(config, db)
    except ColoError:  # a corrupt database: the plan itself says so when it needs one
        return []
    gpu = memory_gpu_name(slots)
    rows = {r.model: r for r in memory_rows(config, database, gpu)}
    together = agent_memory_for_plan(config, database, gpu)
    out: list[PolicyFinding] = []
    for ap in p.agents:
        if ap.requirement_source != "sum of the models" or any(m.source != "declared" for m in ap.models):
            continue
        need = together.get(ap.name)
        will_oom = need is not None and need.source != "declared" and need.requirement_bytes > ap.limit_bytes
        severity: Literal["warning", "error"] = "error" if will_oom else "warning"
        # The same words for every agent of the model (no per-agent numbers), so views can name them in one line.
        outcome = "it will run out of memory" if will_oom else "only the agent's margin covers it"
        named = 0
        for m in ap.models:
            row = rows.get(m.model)
            if row is None or row.declared_bytes is None:
                continue
            if row.measured_bytes is not None:
                needed, label = row.measured_bytes, f"measured on {row.measured_gpu}"
            elif row.estimated_bytes is not None:
                needed, label = row.estimated_bytes, "estimate"
            else:
                continue
            if needed <= row.declared_bytes:
                continue
            named += 1
            case = model_request(m.model, config.models.get(m.model))
            out.append(PolicyFinding(
                ap.name,
                f"memory: {m.model} declares {_gib_text(row.declared_bytes)}; its worst case {_shape_text(case)} "
                f"needs ~{_gib_text(needed)} ({label}) — {outcome}; raise `memory` or plan with --from-db",
                severity,
                "memory",
            ))
        if will_oom and not named and need is not None:
            out.append(PolicyFinding(
                ap.name,
                f"memory: {', '.join(ap.model_ids)} together need ~{_gib_text(need.requirement_bytes)} "
                f"({need.source}: {need.detail}), above the limit {_gib_text(ap.limit_bytes)} — it will run out "
                "of memory; raise `memory` or plan with --from-db",
                "error",
                "memory",
            ))
    return out


def refuse_predicted_oom(planned: NodePlan) -> None:
    """Raise PredictedOutOfMemory naming every agent the plan predicts to run out of memory (every plan a
    running colo takes, unless forced: :func:`plan_run`)."""
    errors = [f for f in planned.plan.findings if f.severity == "error" and f.topic == "memory"]
    if errors:
        raise PredictedOutOfMemory(
            "the plan predicts out-of-memory:\n" + "\n".join(f"  {f.agent}: {f.message}" for f in errors),
            hint="raise those models' `memory` (or profile them and plan with memory_source: db); "
            "--force runs it anyway",
        )


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


@dataclass(frozen=True)
class NodePlan:
    """A plan and what it means for this node.

    ``node``: this machine's node (None: planned without one; :meth:`local` then asks :func:`local_node`).
    ``gpus_known``: NVML's GPUs were given, so a placed agent without a GPU UUID is not on this machine.
    ``warnings``: about the GPUs (an inventory GPU NVML does not see).
    """

    config: ColoConfig
    plan: Plan
    node: str | None
    slots: tuple[GpuSlot, ...]
    warnings: tuple[str, ...] = ()
    gpus_known: bool = False

    def local(self) -> tuple[list[AgentPlan], list[Unplaced]]:
        """Agents this node runs, and those it cannot (see :func:`split_local`)."""
        return split_local(self.plan, self.here(), have_uuids=self.gpus_known)

    def here(self) -> str:
        """This machine's node. Raises PlanError when an inventory of several nodes leaves it ambiguous."""
        return self.node or local_node(self.config)

    def elsewhere(self) -> list[str]:
        """Agents placed on other nodes (run there, not here)."""
        here = self.here()
        return [ap.name for ap in self.plan.placed if ap.gpu is not None and ap.gpu.node != here]

    def mps_gpu_uuids(self) -> list[str]:
        """UUIDs of this node's GPUs the plan runs MPS on: the GPUs that need an MPS daemon."""
        return mps_gpu_uuids(self.plan, self.local()[0])


def placement_of(p: Plan | None) -> dict[str, str]:
    """Agent -> the GPU key (``local:0``) ``p`` placed it on: what a running colo keeps when it plans again
    (``keep`` of :func:`plan_run`); empty without a plan (before ``colo up``)."""
    return {ap.name: ap.gpu.key for ap in p.placed if ap.gpu is not None} if p is not None else {}


def mps_gpu_uuids(p: Plan, mine: Sequence[AgentPlan]) -> list[str]:
    """UUIDs of the GPUs of ``mine`` (this node's agents of ``p``) that the plan runs MPS on."""
    return sorted({ap.gpu.uuid for ap in mine if ap.gpu is not None and ap.gpu.uuid and ap.mps})


def plan_slots(
    config: ColoConfig,
    slots: Sequence[GpuSlot],
    *,
    node: str | None = None,
    from_db: bool = False,
    db: ModelDB | str | Path | None = None,
    warnings: Sequence[str] = (),
    gpus_known: bool = False,
    mps_off: str | None = None,
    state_dir: str | Path | None = None,
    keep: Mapping[str, str] | None = None,
) -> NodePlan:
    """Plan ``config`` on ``slots`` (for this machine's ``node``, if known), with the memory findings.
    ``mps_off``: MPS is off for this run whatever ``policy.mps`` says, and why (``"--no-mps"``). ``keep``: agent
    -> the GPU key it runs on now (:func:`placement_of`), where it stays while it may and fits.

    Raises ConfigError, PlanError.
    """
    mem = memory_inputs(config, slots, from_db=from_db, db=db, state_dir=state_dir)
    p = plan(config, slots, mem, mps_off=mps_off, keep=keep)
    found = memory_findings(config, p, slots, db)  # declared numbers the model DB or the estimate exceeds
    p = replace(p, findings=tuple(sorted((*p.findings, *found), key=lambda f: f.agent)))
    return NodePlan(
        config=config,
        plan=p,
        node=node,
        slots=tuple(slots),
        warnings=tuple(warnings),
        gpus_known=gpus_known,
    )


def plan_node(
    config: ColoConfig,
    gpus: Sequence[GpuSnapshot] | None,
    *,
    node: str | None = None,
    from_db: bool = False,
    db: ModelDB | str | Path | None = None,
    mps_off: str | None = None,
    state_dir: str | Path | None = None,
    keep: Mapping[str, str] | None = None,
) -> NodePlan:
    """The whole pipeline: node, slots (``gpus``: NVML's GPUs here, None when unknown), memory, plan.

    Raises ConfigError, PlanError (``gpus: auto`` without GPUs, an ambiguous node, a model without memory).
    """
    here = local_node(config, node)
    slots, warnings = gpu_slots(config, gpus, here)
    return plan_slots(
        config, slots, node=here, from_db=from_db, db=db, warnings=warnings,
        gpus_known=gpus is not None, mps_off=mps_off, state_dir=state_dir, keep=keep,
    )


def plan_run(
    config: ColoConfig,
    gpus: Sequence[GpuSnapshot] | None,
    *,
    state_dir: str | Path,
    node: str | None = None,
    mps_mode: MpsMode | None = None,
    use_mps: bool = True,
    force: bool = False,
    keep: Mapping[str, str] | None = None,
) -> NodePlan:
    """The plan a running colo takes (``colo up``, ``colo apply``, ``POST /apply``, a reload, a rollback):
    :func:`plan_node` with the state dir's tuned limits, ``mps_mode`` in place of ``policy.mps`` (``colo up
    --mps``), MPS off for the run when not ``use_mps`` (``--no-mps``). ``force``: take a plan that predicts
    an agent runs out of memory. ``keep``: the placement in force (:func:`placement_of`; an apply, a reload,
    a rollback): every agent stays on its GPU unless its pin moves it or it no longer fits there.

    Raises PredictedOutOfMemory (unless ``force``), ConfigError, PlanError.
    """
    if mps_mode is not None:
        config = config.model_copy(update={"policy": config.policy.model_copy(update={"mps": mps_mode})})
    planned = plan_node(
        config, gpus, node=node, mps_off=None if use_mps else "--no-mps", state_dir=state_dir, keep=keep
    )
    if not force:
        refuse_predicted_oom(planned)
    return planned


def plan_config(
    config: ColoConfig,
    *,
    from_db: bool = False,
    db: ModelDB | str | Path | None = None,
    state_dir: str | Path | None = None,
    keep: Mapping[str, str] | None = None,
) -> NodePlan:
    """Plan without running anything (``colo plan``, ``validate``, ``render``): an inventory as configured
    (no GPU needed), ``gpus: auto`` on the GPUs NVML sees now. ``keep``: where agents ran (``colo tune``: the
    store's record). Raises ConfigError, PlanError."""
    if config.gpus != "auto":
        return plan_slots(config, inventory_slots(config), from_db=from_db, db=db, state_dir=state_dir, keep=keep)
    gpus = read_gpus()
    if gpus is None:
        raise PlanError(
            "gpus: auto, but the GPUs cannot be read here",
            hint="plan without a GPU with --gpu 24GiB (or list an inventory under 'gpus:')",
        )
    return plan_node(config, gpus, from_db=from_db, db=db, state_dir=state_dir, keep=keep)


def launch_setup(config: ColoConfig, ap: AgentPlan, *, config_copy: Path, mps_root: MpsRoot | None) -> AgentSetup:
    """How planned agent ``ap`` is launched on this node: argv, MPS client environment, health, restart
    rules (``colo up`` launches exactly this; ``colo mps env`` prints its environment)."""
    return agent_setup(config, ap, config_copy=config_copy, mps_root=mps_root)
