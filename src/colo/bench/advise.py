"""``colo advise``: the seed guide's decision — MPS, separate servers (time-slicing), MIG, or one batching
server — from a configuration, its plan and (best) a ``colo bench`` result measured on the same GPU.

Each rule that applies adds a :class:`Reason` pointing at one option with a weight; the option with the
highest total wins (ties: MPS, then separate servers, then MIG). Measurements weigh most: a measured MPS /
time-slicing ratio beats any rule of thumb. Pure: no I/O.

The rules (seed guide's decision framework, made concrete):

- measured MPS ≥ 1.05× time-slicing at the largest N → MPS (3); ≤ 0.95× → separate servers (3);
- one instance alone keeps the SMs busy < 50 % → MPS (1) (idle SMs for other processes' kernels);
  ≥ 80 % → separate servers (1) (nothing to overlap);
- more agents on a GPU than MPS clients allowed (or agents the planner left out for that reason) →
  separate servers (3);
- every agent runs the same runtime (colo's built-in agent, or one program) → MPS (1) ("same framework");
- high-priority agents share a GPU with others → isolation matters: a fatal GPU fault in one MPS client is
  reported to every client of that GPU → MIG (2) on a MIG-capable GPU when the agents fit its slices, else
  separate servers (2);
- low-priority agents with a smaller thread share → MPS (1) (only MPS enforces SM shares and priorities
  between processes);
- a measured batching setup (``colo bench servers --setup batching``: one server, N parallel slots, e.g.
  llama-server ``-np N`` / Ollama's ``OLLAMA_NUM_PARALLEL``) ≥ 1.05× the best separate-servers setup at the
  largest common N → one batching server (3); ≤ 0.95× → the best separate setup (2). When the batching
  server wins, a note says what it costs: one process, one fault domain, and one copy of the weights; and
  the measured MPS / time-slicing ratio then becomes a note (it only ranks the separate setups that the one
  server beat), so a measured batching win is not outvoted by it;
- no measurement → a note to run ``colo bench``;
- the usage history (``colo up`` records it; at least ``HISTORY_MIN_WINDOWS`` windows over
  ``HISTORY_MIN_SECS``): a GPU on which no window ever had more than one busy agent (an agent is busy in a
  window when it answered requests in it) → separate servers (2): MPS costs a lone process 13–15 % (measured
  on the H100 and the H200) and there was never a second one to overlap; an agent whose peak never reached
  half its limit → a note with the figures (``colo tune`` lowers it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from colo import units
from colo.bench.modes import Mode
from colo.bench.results import BenchResult
from colo.plan.types import Plan
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import UsageSample

Option = Literal["mps", "separate", "mig", "batching"]
OPTIONS: tuple[Option, ...] = ("mps", "separate", "mig", "batching")
OPTION_NAMES = {
    "mps": "MPS",
    "separate": "separate servers (time-slicing)",
    "mig": "MIG",
    "batching": "one batching server (N parallel slots)",
}
MIG_CAPABLE = ("a100", "a30", "h100", "h200", "h20", "b200", "b100", "gb200", "rtx pro 6000")
MIG_MAX_INSTANCES = 7
HISTORY_MIN_WINDOWS = 6
HISTORY_MIN_SECS = 60.0
LOW_PEAK_RATIO = 0.5


@dataclass(frozen=True)
class Reason:
    """One rule that applied: which option it favours, how strongly, and why (with the numbers)."""

    points_to: Option
    weight: int
    text: str

    def symbol(self) -> str:
        return {"mps": "+MPS", "separate": "+separate", "mig": "+MIG", "batching": "+batching"}[self.points_to]

    def to_dict(self) -> dict[str, Any]:
        return {"points_to": self.points_to, "weight": self.weight, "text": self.text}


@dataclass(frozen=True)
class Advice:
    """The decision, its score per option, the reasons that applied and notes that did not score."""

    decision: Option
    scores: dict[str, int]
    reasons: tuple[Reason, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def headline(self) -> str:
        return f"Use {OPTION_NAMES[self.decision]}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "headline": self.headline(),
            "scores": dict(self.scores),
            "reasons": [r.to_dict() for r in self.reasons],
            "notes": list(self.notes),
        }


def mig_capable(gpu_name: str) -> bool:
    """Whether the GPU's name is one of the MIG-capable families."""
    name = gpu_name.lower()
    return any(family in name for family in MIG_CAPABLE)


def mig_fits(limits_bytes: Sequence[int], gpu_memory_bytes: int) -> bool:
    """Whether agents with these limits fit MIG slices of one GPU: each needs ceil(limit / (memory / 8))
    memory slices (an H100 80GB's 1g.10gb is one), and a GPU has 7 compute slices in all."""
    slice_bytes = gpu_memory_bytes // 8
    if slice_bytes <= 0:
        return False
    needed = sum(-(-limit // slice_bytes) for limit in limits_bytes)
    return len(limits_bytes) <= MIG_MAX_INSTANCES and needed <= MIG_MAX_INSTANCES


def _bench_reasons(runs: Sequence[BenchResult]) -> tuple[list[Reason], list[str]]:
    reasons: list[Reason] = []
    notes: list[str] = []
    for run in runs:
        batching_reasons, batching_notes = _batching_reasons(run)
        batching_won = any(r.points_to == "batching" for r in batching_reasons)
        levels = [n for n in run.concurrencies(Mode.MPS) if n > 1 and run.mps_ratio(n) is not None]
        if levels:
            n = max(levels)
            r = run.mps_ratio(n)
            assert r is not None
            if batching_won:  # MPS vs time-slicing only ranks the separate setups one server beat
                notes.append(
                    f"{run.title}: of the separate-server setups, MPS is {r:.2f}× time-slicing at N={n}; "
                    "one batching server measured faster than both"
                )
            elif r >= 1.05:
                reasons.append(Reason("mps", 3, f"{run.title}: measured MPS {r:.2f}× time-slicing at N={n}"))
            elif r <= 0.95:
                reasons.append(
                    Reason("separate", 3, f"{run.title}: measured MPS {r:.2f}× time-slicing at N={n} (slower)")
                )
            else:
                notes.append(f"{run.title}: MPS and time-slicing within 5 % at N={n} ({r:.2f}×)")
        reasons += batching_reasons
        notes += batching_notes
        single = run.point(Mode.TIMESLICE, 1) or run.point(Mode.MPS, 1)
        sm = single.gpu.sm_util_mean_pct if single is not None and single.gpu is not None else None
        if sm is not None:
            if sm < 50:
                reasons.append(
                    Reason(
                        "mps",
                        1,
                        f"{run.title}: one instance keeps the SMs busy only {sm:.0f} % "
                        "of the time — idle SMs MPS can give to other processes",
                    )
                )
            elif sm >= 80:
                reasons.append(
                    Reason(
                        "separate",
                        1,
                        f"{run.title}: one instance already keeps the SMs busy "
                        f"{sm:.0f} % of the time — little for MPS to overlap",
                    )
                )
    return reasons, notes


def _batching_reasons(run: BenchResult) -> tuple[list[Reason], list[str]]:
    """One server with N slots against N separate servers (the best of MPS and time-slicing) at the largest
    N both measured."""
    separate = [m for m in (Mode.MPS, Mode.TIMESLICE) if m in run.modes()]
    common = [
        n
        for n in run.concurrencies(Mode.BATCHING)
        if n > 1 and any(run.point(m, n) is not None for m in separate)
    ]
    if not common:
        return [], []
    n = max(common)
    batch = run.point(Mode.BATCHING, n)
    assert batch is not None
    best_mode, best = max(
        ((m, p.aggregate_per_sec) for m in separate if (p := run.point(m, n)) is not None), key=lambda mv: mv[1]
    )
    if best <= 0:
        return [], []
    ratio = batch.aggregate_per_sec / best
    unit = f"{run.unit}/s"
    setup = "MPS" if best_mode == Mode.MPS else "time-sliced"
    text = (
        f"{run.title}: one server with {n} slots {batch.aggregate_per_sec:,.1f} {unit} aggregate vs "
        f"{best:,.1f} for {n} separate servers ({setup}): {ratio:.2f}×"
    )
    if ratio >= 1.05:
        return [Reason("batching", 3, text)], [
            "one batching server is one process: one crash or GPU fault stops every stream, and its slots "
            "share one context size; it holds the weights once, where N servers hold N copies"
        ]
    if ratio <= 0.95:
        return [Reason("mps" if best_mode == Mode.MPS else "separate", 2, text + " (batching slower)")], []
    return [], [text + " (within 5 %)"]


def history_reasons(plan: Plan, history: Sequence[UsageSample]) -> tuple[list[Reason], list[str]]:
    """What the usage history says (see the module's rules); nothing when it is too short to trust."""
    reasons: list[Reason] = []
    notes: list[str] = []
    if not history:
        return reasons, notes
    span = max(u.end for u in history) - min(u.start for u in history)
    windows = {u.end for u in history}
    if len(windows) < HISTORY_MIN_WINDOWS or span < HISTORY_MIN_SECS:
        notes.append(
            f"usage history too short to judge ({len(windows)} windows over {units.format_duration(span)}; "
            f"needs {HISTORY_MIN_WINDOWS} over {units.format_duration(HISTORY_MIN_SECS)})"
        )
        return reasons, notes
    period = f"{len(windows)} windows over {units.format_duration(span)}"
    for ap in plan.placed:
        mine = [u for u in history if u.agent == ap.name and u.polls > 0]
        if len(mine) < HISTORY_MIN_WINDOWS:
            continue
        peak = max(u.peak_bytes for u in mine)
        limit = max(u.limit_bytes for u in mine) or ap.limit_bytes
        if limit and peak / limit < LOW_PEAK_RATIO:
            notes.append(
                f"{ap.name} never approaches its limit: peak {units.format_size(peak)} of "
                f"{units.format_size(limit)} ({100 * peak / limit:.0f} %) over {len(mine)} windows — "
                "`colo tune` would lower it"
            )
    on_gpu: dict[str, set[str]] = {}
    for ap in plan.placed:
        assert ap.gpu is not None
        on_gpu.setdefault(ap.gpu.key, set()).add(ap.name)
    for key, names in sorted(on_gpu.items()):
        rows = [u for u in history if u.agent in names and u.requests is not None]
        if len(names) < 2 or not rows:
            continue
        busy: dict[float, int] = {}
        for u in rows:
            busy[u.end] = busy.get(u.end, 0) + (1 if (u.requests or 0) > 0 else 0)
        most = max(busy.values())
        if most <= 1:
            reasons.append(
                Reason(
                    "separate",
                    2,
                    f"{key}: {len(names)} agents placed, but no window of {len(busy)} ({period}) had more than "
                    f"{most} busy at once — MPS costs a lone process 13–15 % and had nothing to overlap",
                )
            )
    return reasons, notes


def advise(
    config: ColoConfig, plan: Plan, runs: Sequence[BenchResult] = (), history: Sequence[UsageSample] = ()
) -> Advice:
    """Decide for ``config`` as planned in ``plan``, using ``runs`` (``colo bench`` results) and the usage
    ``history`` of the running system when given."""
    reasons, notes = _bench_reasons(runs)
    h_reasons, h_notes = history_reasons(plan, history)
    reasons += h_reasons
    notes += h_notes
    if not runs:
        notes.append("no measurement: run `colo bench` on this GPU with your workload and pass --bench")

    cap = config.policy.max_clients_per_gpu
    per_gpu: dict[str, list[str]] = {}
    for agent in plan.placed:
        assert agent.gpu is not None
        per_gpu.setdefault(agent.gpu.key, []).append(agent.name)
    crowded = {k: v for k, v in per_gpu.items() if len(v) > cap}
    for key, names in crowded.items():
        reasons.append(Reason("separate", 3, f"{len(names)} agents on {key} exceed the MPS client cap of {cap}"))
    capped = [u.agent for u in plan.unplaced if "max_clients_per_gpu" in u.reason]
    if capped:
        reasons.append(
            Reason(
                "separate",
                3,
                f"{len(capped)} agent(s) ({', '.join(capped)}) left out because every GPU already has "
                f"{cap} MPS clients — they exceed the MPS client cap of {cap}",
            )
        )
    if plan.unplaced:
        notes.append(
            f"{len(plan.unplaced)} agent(s) fit on no GPU ({', '.join(u.agent for u in plan.unplaced)}): "
            "neither MPS nor time-slicing adds memory"
        )

    # The runtime is the program (three llama-servers on three ports are one runtime).
    commands = {Path(a.command[0]).name if a.command else "<colo built-in agent>" for a in config.agents.values()}
    if len(commands) == 1 and len(config.agents) > 1:
        reasons.append(Reason("mps", 1, "every agent runs the same runtime — the seed's 'same framework' case"))
    elif len(commands) > 1:
        notes.append(f"{len(commands)} different agent programs ({', '.join(sorted(commands))}): heterogeneous runtimes")

    by_name = {a.name: a for a in plan.placed}
    isolation_gpus = [
        key for key, names in per_gpu.items() if len(names) > 1 and any(by_name[n].priority == "high" for n in names)
    ]
    if isolation_gpus:
        gpus = {a.gpu.key: a.gpu for a in plan.placed if a.gpu is not None}
        mig_ok = all(
            mig_capable(gpus[k].name)
            and mig_fits([by_name[n].limit_bytes for n in per_gpu[k]], gpus[k].memory_total_bytes)
            for k in isolation_gpus
        )
        why = (
            f"high-priority agents share {', '.join(isolation_gpus)} with others; under MPS a fatal GPU "
            "fault in one client is reported to every client of that GPU"
        )
        if mig_ok:
            reasons.append(Reason("mig", 2, why + " — MIG slices isolate memory and faults, and they fit"))
        else:
            reasons.append(Reason("separate", 2, why + " — separate contexts keep faults apart"))
            if any(mig_capable(gpus[k].name) for k in isolation_gpus):
                notes.append(f"MIG would isolate too, but the agents need more than its {MIG_MAX_INSTANCES} slices")
    shares = {a.active_thread_pct for a in plan.placed}
    if len(shares) > 1 or any(a.client_priority for a in plan.placed):
        reasons.append(
            Reason(
                "mps",
                1,
                "agents have different SM shares / client priorities, which only MPS enforces between processes",
            )
        )

    scores: dict[str, int] = {o: sum(r.weight for r in reasons if r.points_to == o) for o in OPTIONS}
    decision = max(OPTIONS, key=lambda o: (scores[o], -OPTIONS.index(o)))
    return Advice(decision, scores, tuple(reasons), tuple(notes))
