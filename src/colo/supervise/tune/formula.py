"""``colo tune``: limits from what agents really used. Pure (no I/O, no clock): the usage history, the plan
and the model database's figures in; per-agent proposals and what the freed memory buys out.

The formula, per agent (bytes)::

    basis    = max(observed peak, profiled worst case)
    margin   = max(3 × σ(window peaks), ALLOCATOR_GRANULE_BYTES)
    proposed = round_up(max(basis + margin, need, failed + round_to), round_to)

* *observed peak*: the highest window high-water mark in the history (NVML, the agent's process tree);
* *profiled worst case*: ``colo profile``'s measurement of the agent's models at their worst-case shape
  (model database, for the GPU model planned for), when there is one;
* σ: the population standard deviation of the window peaks once the agent had served its worst case
  (else of the upper half of the window peaks): an agent whose use still moves gets more room; idle
  windows before its first heavy request do not count;
* ``ALLOCATOR_GRANULE_BYTES`` (40 MiB): two of PyTorch's 20 MiB large-pool segments — the caching allocator
  may map one more at any moment for a 1–10 MiB tensor, so less than that is no margin at all;
* *need*: what the agent's declared worst case needs by the model database (measured, else colo's
  estimate) — a proposal never goes below it; except that a window in which the agent served every model's
  worst-case shape is itself a measurement of that need (NVML, as ``colo profile`` measures) and outranks
  an *estimate*;
* *failed*: a tuned limit the agent already ran out of memory under (rolled back): never proposed again;
* ``round_to``: 32 MiB (``TUNE_ROUND_BYTES``), or ``policy.round_to`` when that is finer: the limit follows a
  measurement, so the policy's coarse rounding (128 MiB by default, there to absorb an estimate's error)
  would only lower peak / limit.

Too little history to trust → no proposal, and the reason: fewer than ``min_windows`` windows, a span under
``min_secs``, an out-of-memory error in the history, or no window in which the agent had served its
worst-case shape (each model's ``batch_size × max_seq_len``) while nothing was profiled for it (a command
agent reports no shapes: it needs a profile).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from colo import units
from colo.memory.allocator import LARGE_SEGMENT_BYTES
from colo.plan.types import LimitSource
from colo.supervise.snapshots import Shape, UsageSample

ALLOCATOR_GRANULE_BYTES = 2 * LARGE_SEGMENT_BYTES
#: Tuned limits are rounded up to this (or to ``policy.round_to`` when finer): a limit that follows a
#: measurement needs no coarse rounding to absorb an estimate's error.
TUNE_ROUND_BYTES = 32 * units.MIB
SIGMAS = 3.0
MIN_WINDOWS = 6
MIN_SECS = 60.0


class NeedSource(StrEnum):
    """Where an agent's worst-case need comes from: ``colo profile``'s measurement, colo's estimate, or
    nowhere (unknown)."""

    NONE = "none"
    MEASURED = "measured"
    ESTIMATED = "estimated"


@dataclass(frozen=True)
class AgentFacts:
    """What is known about one placed agent besides its history.

    ``worst_shapes``: each model's worst-case request (empty for a command agent, which reports no shapes).
    ``need_bytes``: its worst case's need by the model database (measured or estimated, ``need_source``, with
    ``need_detail`` saying from what; None: unknown).
    ``profiled_bytes``: the measured figure (``colo profile``), None when not measured.
    ``failed_limit_bytes``: a tuned limit it ran out of memory under (rolled back), if any.
    """

    agent: str
    gpu: str  # label, e.g. "gpu0"
    gpu_key: str  # "local:0"
    limit_bytes: int
    limit_source: LimitSource = LimitSource.POLICY
    worst_shapes: tuple[Shape, ...] = ()
    need_bytes: int | None = None
    need_source: NeedSource = NeedSource.NONE
    need_detail: str = ""
    profiled_bytes: int | None = None
    failed_limit_bytes: int | None = None


@dataclass(frozen=True)
class TuneSettings:
    round_to_bytes: int = TUNE_ROUND_BYTES
    min_windows: int = MIN_WINDOWS
    min_secs: float = MIN_SECS
    sigmas: float = SIGMAS
    granule_bytes: int = ALLOCATOR_GRANULE_BYTES


@dataclass(frozen=True)
class Proposal:
    """One agent: current limit, what was seen, and the proposed limit (None: not trusted; ``reason`` says
    why)."""

    agent: str
    gpu: str
    current_bytes: int
    current_source: LimitSource
    windows: int
    span_secs: float
    observed_peak_bytes: int | None
    stdev_bytes: int
    profiled_bytes: int | None
    need_bytes: int | None
    worst_case_seen: bool
    oom: int
    proposed_bytes: int | None
    basis_bytes: int | None
    margin_bytes: int | None
    reason: str

    @property
    def trusted(self) -> bool:
        return self.proposed_bytes is not None

    @property
    def changes(self) -> bool:
        return self.proposed_bytes is not None and self.proposed_bytes != self.current_bytes

    @property
    def freed_bytes(self) -> int:
        return self.current_bytes - self.proposed_bytes if self.proposed_bytes is not None else 0

    def detail(self) -> str:
        """Where the limit came from, for the tuned-limits file and `colo plan`."""
        peak = units.format_size(self.observed_peak_bytes or 0)
        text = f"peak {peak} over {self.windows} windows ({units.format_duration(self.span_secs)})"
        if self.profiled_bytes is not None:
            text += f", profiled {units.format_size(self.profiled_bytes)}"
        return text + f", margin {units.format_size(self.margin_bytes or 0)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "gpu": self.gpu,
            "current_bytes": self.current_bytes,
            "current_source": self.current_source.value,
            "windows": self.windows,
            "span_secs": round(self.span_secs, 1),
            "observed_peak_bytes": self.observed_peak_bytes,
            "stdev_bytes": self.stdev_bytes,
            "profiled_bytes": self.profiled_bytes,
            "need_bytes": self.need_bytes,
            "worst_case_seen": self.worst_case_seen,
            "oom": self.oom,
            "proposed_bytes": self.proposed_bytes,
            "basis_bytes": self.basis_bytes,
            "margin_bytes": self.margin_bytes,
            "freed_bytes": self.freed_bytes,
            "peak_over_proposed": (
                round(self.observed_peak_bytes / self.proposed_bytes, 3)
                if self.proposed_bytes and self.observed_peak_bytes is not None
                else None
            ),
            "trusted": self.trusted,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GpuGain:
    """One GPU's proposals: its agents, their limits together now (``before_bytes``) and as proposed
    (``after_bytes``; an agent without a proposal keeps its limit), what that frees and what it buys (``room``:
    (agent, how many more copies))."""

    gpu: str
    freed_bytes: int
    room: tuple[tuple[str, int], ...] = ()
    agents: tuple[str, ...] = ()
    before_bytes: int = 0
    after_bytes: int = 0

    def text(self) -> str:
        size = units.format_size(abs(self.freed_bytes))
        if self.freed_bytes < 0:
            return f"takes {size} more on {self.gpu}"
        if not self.room:
            return f"frees {size} on {self.gpu}: not enough for another agent"
        name, n = self.room[0]
        return f"frees {size} on {self.gpu}: room for {n} more {name}"

    def allocation_text(self) -> str:
        """``gpu1 (9 agents): 36.75 GiB now → 17.09 GiB proposed``."""
        gib = units.GIB
        return (
            f"{self.gpu} ({len(self.agents)} agent{'s' if len(self.agents) != 1 else ''}): "
            f"{self.before_bytes / gib:.2f} GiB now → {self.after_bytes / gib:.2f} GiB proposed"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "agents": list(self.agents),
            "before_bytes": self.before_bytes,
            "after_bytes": self.after_bytes,
            "freed_bytes": self.freed_bytes,
            "room": [list(r) for r in self.room],
            "text": self.text(),
        }


@dataclass(frozen=True)
class TuneReport:
    proposals: tuple[Proposal, ...]
    gpus: tuple[GpuGain, ...]
    total_before_bytes: int
    total_after_bytes: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agents": [p.to_dict() for p in self.proposals],
            "gpus": [g.to_dict() for g in self.gpus],
            "total_before_bytes": self.total_before_bytes,
            "total_after_bytes": self.total_after_bytes,
            "notes": list(self.notes),
        }


def worst_case_seen(samples: Iterable[UsageSample], worst: Sequence[Shape]) -> bool:
    """Whether some window shows every model at (at least) its worst-case shape."""
    if not worst:
        return False
    for s in samples:
        have = {x.model: x for x in s.shapes}
        if all(m.model in have and have[m.model].covers(m.rows, m.seq_len, m.new_tokens) for m in worst):
            return True
    return False


def _settled_peaks(polled: Sequence[UsageSample], worst: Sequence[Shape]) -> list[int]:
    """The window peaks whose spread sets the margin: those after the agent had served its worst case (its
    allocator then holds what the worst case needs; what still moves is noise), else the upper half. Idle
    windows before the first heavy request say nothing about how far the peak may go."""
    if worst:
        done = [s.peak_bytes for s in polled if worst_case_seen([s], worst)]
        if len(done) > 1:
            return done
    peaks = sorted(s.peak_bytes for s in polled)
    return peaks[len(peaks) // 2 :]


def propose_one(facts: AgentFacts, samples: Sequence[UsageSample], settings: TuneSettings) -> Proposal:
    """The proposal for one agent from its history windows (see the module's formula)."""
    polled = [s for s in samples if s.polls > 0]
    peaks = [s.peak_bytes for s in polled]
    span = (max(s.end for s in polled) - min(s.start for s in polled)) if polled else 0.0
    oom = sum(s.oom for s in samples)
    peak = max(peaks) if peaks else None
    seen = worst_case_seen(polled, facts.worst_shapes)
    spread = _settled_peaks(polled, facts.worst_shapes)
    stdev = int(statistics.pstdev(spread)) if len(spread) > 1 else 0

    def out(reason: str, proposed: int | None = None, basis: int | None = None, margin: int | None = None) -> Proposal:
        return Proposal(
            facts.agent, facts.gpu, facts.limit_bytes, facts.limit_source, len(polled), span, peak, stdev,
            facts.profiled_bytes, facts.need_bytes, seen, oom, proposed, basis, margin, reason,
        )

    if not polled:
        return out("no usage history: it has not run under colo in this period")
    if len(polled) < settings.min_windows or span < settings.min_secs:
        return out(
            f"too little history to trust: {len(polled)} windows over {units.format_duration(span)} (needs at "
            f"least {settings.min_windows} over {units.format_duration(settings.min_secs)})"
        )
    if oom:
        return out(f"ran out of memory {oom} time(s) in this period: its limit is not to be lowered")
    if facts.profiled_bytes is None and not seen:
        if facts.worst_shapes:
            shapes = ", ".join(f"{m.model} {m.text()}" for m in facts.worst_shapes)
            return out(
                f"never served its worst case ({shapes}) in this period and has no profile: send a worst-case "
                "request (or run `colo profile`) and tune again"
            )
        return out("a command agent reports no request shapes, and it has no profile: run `colo profile` first")
    assert peak is not None
    basis = max(peak, facts.profiled_bytes or 0)
    margin = max(int(settings.sigmas * stdev), settings.granule_bytes)
    failed = facts.failed_limit_bytes + settings.round_to_bytes if facts.failed_limit_bytes else 0
    # The need is a floor when it was measured, or when the history never showed the worst case; a window at
    # the worst-case shape is itself a measurement of that need (NVML, like `colo profile`) and outranks an
    # estimate.
    measured_need = facts.need_source is NeedSource.MEASURED
    need = (facts.need_bytes or 0) if (measured_need or not seen) else 0
    floor = max(need, failed)
    proposed = units.round_up(max(basis + margin, floor), settings.round_to_bytes)
    why = "peak" if peak >= (facts.profiled_bytes or 0) else "profiled worst case"
    if floor > basis + margin:
        why = "the worst case's need" if floor == need else "above the limit it ran out of memory under"
    return out(f"from the {why}", proposed, basis, proposed - basis)


def room(freed_bytes: int, limits: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """How many more copies of each agent ``freed_bytes`` holds (largest agent that fits at least once first)."""
    fits = [(name, freed_bytes // lim) for name, lim in limits.items() if lim > 0 and freed_bytes // lim >= 1]
    return tuple(sorted(fits, key=lambda r: (-limits[r[0]], r[0])))


def propose(
    facts: Sequence[AgentFacts], samples: Iterable[UsageSample], settings: TuneSettings | None = None
) -> TuneReport:
    """Proposals for every agent of ``facts`` from the history ``samples`` (any agents, any order)."""
    settings = settings or TuneSettings()
    by_agent: dict[str, list[UsageSample]] = defaultdict(list)
    for s in samples:
        by_agent[s.agent].append(s)
    proposals = tuple(propose_one(f, by_agent.get(f.agent, []), settings) for f in facts)
    after = {p.agent: p.proposed_bytes if p.proposed_bytes is not None else p.current_bytes for p in proposals}
    freed: dict[str, int] = defaultdict(int)
    before: dict[str, int] = defaultdict(int)
    on_gpu: dict[str, dict[str, int]] = defaultdict(dict)
    for f, p in zip(facts, proposals, strict=True):
        freed[f.gpu] += p.freed_bytes
        before[f.gpu] += p.current_bytes
        on_gpu[f.gpu][f.agent] = after[f.agent]
    gains = tuple(
        GpuGain(
            g, freed[g], room(freed[g], on_gpu[g]) if freed[g] > 0 else (), tuple(on_gpu[g]), before[g],
            sum(on_gpu[g].values()),
        )
        for g in sorted(freed)
    )
    notes = []
    untrusted = [p.agent for p in proposals if not p.trusted]
    if untrusted:
        notes.append(f"no proposal for {', '.join(untrusted)}: see each reason")
    return TuneReport(
        proposals,
        gains,
        total_before_bytes=sum(p.current_bytes for p in proposals),
        total_after_bytes=sum(after.values()),
        notes=tuple(notes),
    )


def rollback_limit(
    limit_source: LimitSource, current_bytes: int, previous_bytes: int | None, rolled_back: bool
) -> int | None:
    """The limit to restore for an agent that just ran out of memory: its limit before tuning, when its
    current limit is a tuned one (not already rolled back) below that; else None — nothing to roll back, the
    out-of-memory error is the agent's own under the policy's limit (or under a limit tuning raised)."""
    if limit_source is not LimitSource.TUNED or rolled_back or previous_bytes is None or previous_bytes <= current_bytes:
        return None
    return previous_bytes
