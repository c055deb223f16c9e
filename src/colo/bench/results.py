"""Benchmark results as frozen dataclasses, and the numbers derived from them (efficiency, ratio, bound).

A :class:`BenchResult` holds every measured point of one ``colo bench`` run; reports (JSON, Markdown, PNG)
and ``colo advise`` read it. ``to_dict``/``from_dict`` round-trip it through the JSON report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from colo.bench import stats
from colo.bench.activity import GpuActivity
from colo.bench.modes import TABLE_ORDER, Mode


@dataclass(frozen=True)
class InstanceResult:
    """One instance's timed window: ``items`` (in ``unit``) over ``elapsed_secs``, each request's latency."""

    index: int
    label: str
    pid: int
    unit: str
    items: float
    elapsed_secs: float
    latencies_secs: tuple[float, ...]
    info: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, float] = field(default_factory=dict)
    started_monotonic: float = 0.0

    @property
    def per_sec(self) -> float:
        """Items per second over the window; for a ``--cmd`` workload, the mean rate the command printed."""
        if "reported_per_sec" in self.extra and self.latencies_secs:
            return self.extra["reported_per_sec"] / len(self.latencies_secs)
        return stats.rate(self.items, self.elapsed_secs)

    @property
    def server_per_sec(self) -> float | None:
        """The server-side rate: tokens over the generation time the server reported (Ollama ``eval_duration``,
        llama-server ``timings.predicted_ms``), summed over requests; None when the server reports none."""
        eval_secs = self.extra.get("eval_secs")
        return stats.rate(self.items, eval_secs) if eval_secs else None

    @property
    def requests(self) -> int:
        return len(self.latencies_secs)

    def to_dict(self, *, with_latencies: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "label": self.label,
            "pid": self.pid,
            "unit": self.unit,
            "items": self.items,
            "elapsed_secs": self.elapsed_secs,
            "started_monotonic": self.started_monotonic,
            "per_sec": self.per_sec,
            "server_per_sec": self.server_per_sec,
            "requests": self.requests,
            "latency": stats.summarize_latencies(self.latencies_secs).to_dict(),
            "info": dict(self.info),
            "extra": dict(self.extra),
        }
        if with_latencies:
            out["latencies_secs"] = list(self.latencies_secs)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> InstanceResult:
        """Inverse of :meth:`to_dict`. Without the latency list, ``per_sec`` still holds (items / elapsed)."""
        return cls(
            index=int(raw["index"]),
            label=str(raw.get("label", "")),
            pid=int(raw.get("pid", 0)),
            unit=str(raw.get("unit", "item")),
            items=float(raw["items"]),
            elapsed_secs=float(raw["elapsed_secs"]),
            latencies_secs=tuple(float(x) for x in raw.get("latencies_secs", ())),
            info=dict(raw.get("info", {})),
            extra={str(k): float(v) for k, v in dict(raw.get("extra", {})).items()},
            started_monotonic=float(raw.get("started_monotonic", 0.0)),
        )


@dataclass(frozen=True)
class PointResult:
    """N instances run together in one mode (or one process with the merged batch: mode ``merged``)."""

    mode: Mode
    concurrency: int
    instances: tuple[InstanceResult, ...]
    gpu: GpuActivity | None = None
    workload: str = ""
    stored_latency: stats.LatencySummary | None = None  # from a JSON report written without latency lists
    # the load generator's own facts (``colo bench agents``: ``cpu_secs``, ``wall_secs``, ``cpu_cores_used``)
    load: Mapping[str, float] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return self.instances[0].unit if self.instances else "item"

    @property
    def aggregate_per_sec(self) -> float:
        """Sum of the instances' rates (they ran concurrently over the same duration)."""
        return sum(i.per_sec for i in self.instances)

    @property
    def individual_per_sec(self) -> float:
        """Mean per-instance rate."""
        return self.aggregate_per_sec / len(self.instances) if self.instances else 0.0

    @property
    def latency(self) -> stats.LatencySummary:
        """Latency over all requests of all instances (the stored summary when the lists were not kept)."""
        pooled: list[float] = []
        for inst in self.instances:
            pooled.extend(inst.latencies_secs)
        if not pooled and self.stored_latency is not None:
            return self.stored_latency
        return stats.summarize_latencies(pooled)

    @property
    def start_spread_secs(self) -> float:
        """How far apart the instances' timed windows began (the barrier's precision)."""
        starts = [i.started_monotonic for i in self.instances]
        return max(starts) - min(starts) if starts else 0.0

    @property
    def fairness(self) -> float | None:
        return stats.fairness([i.per_sec for i in self.instances])

    def to_dict(self, *, with_latencies: bool = True) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "workload": self.workload,
            "unit": self.unit,
            "aggregate_per_sec": self.aggregate_per_sec,
            "individual_per_sec": self.individual_per_sec,
            "latency": self.latency.to_dict(),
            "fairness": self.fairness,
            "start_spread_secs": self.start_spread_secs,
            "instances": [i.to_dict(with_latencies=with_latencies) for i in self.instances],
            "gpu": self.gpu.to_dict() if self.gpu else None,
            "load": dict(self.load),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PointResult:
        gpu = raw.get("gpu")
        return cls(
            mode=Mode(raw["mode"]),
            concurrency=int(raw["concurrency"]),
            instances=tuple(InstanceResult.from_dict(i) for i in raw.get("instances", ())),
            gpu=GpuActivity.from_dict(gpu) if gpu else None,
            workload=str(raw.get("workload", "")),
            stored_latency=stats.latency_from_dict(raw["latency"]) if raw.get("latency") else None,
            load={str(k): float(v) for k, v in dict(raw.get("load") or {}).items()},
        )


@dataclass(frozen=True)
class BenchResult:
    """A whole run: its points, the machine it ran on, and what was run."""

    title: str
    workload: str
    points: tuple[PointResult, ...]
    machine: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def unit(self) -> str:
        return self.points[0].unit if self.points else "item"

    def modes(self) -> list[Mode]:
        """Co-location modes present, in a stable order (time-slicing first)."""
        seen = {p.mode for p in self.points if p.mode != Mode.MERGED}
        ordered: list[Mode] = [m for m in TABLE_ORDER if m in seen]
        return ordered + sorted(seen - set(ordered))

    def concurrencies(self, mode: Mode | None = None) -> list[int]:
        return sorted({p.concurrency for p in self.points if mode is None or p.mode == mode})

    def point(self, mode: Mode, concurrency: int) -> PointResult | None:
        for p in self.points:
            if p.mode == mode and p.concurrency == concurrency:
                return p
        return None

    def table_points(self) -> list[tuple[Mode, int, PointResult]]:
        """``(mode, N, point)`` in table order: each mode of :meth:`modes`, its levels ascending."""
        out = []
        for mode in self.modes():
            for n in self.concurrencies(mode):
                p = self.point(mode, n)
                if p is not None:
                    out.append((mode, n, p))
        return out

    def efficiency(self, mode: Mode, concurrency: int) -> float | None:
        """Scaling efficiency of ``mode`` at N against the same mode at N = 1."""
        point = self.point(mode, concurrency)
        single = self.point(mode, 1)
        if point is None or single is None:
            return None
        return stats.scaling_efficiency(point.aggregate_per_sec, single.aggregate_per_sec, concurrency)

    def mps_ratio(self, concurrency: int) -> float | None:
        """MPS aggregate / time-slicing aggregate at N."""
        mps = self.point(Mode.MPS, concurrency)
        ts = self.point(Mode.TIMESLICE, concurrency)
        return stats.ratio(mps.aggregate_per_sec if mps else None, ts.aggregate_per_sec if ts else None)

    def over_timeslice(self, mode: Mode, concurrency: int) -> float | None:
        """``mode``'s aggregate / time-slicing's aggregate at N (``auto``: what ``policy.mps: auto`` gives)."""
        point = self.point(mode, concurrency)
        ts = self.point(Mode.TIMESLICE, concurrency)
        return stats.ratio(point.aggregate_per_sec if point else None, ts.aggregate_per_sec if ts else None)

    def bound(self, concurrency: int) -> float | None:
        """The merged-batch bound at N: one process with N× the batch (N = 1 is the single instance)."""
        merged = self.point(Mode.MERGED, concurrency)
        if merged is not None:
            return merged.aggregate_per_sec
        if concurrency == 1:
            single = self.point(Mode.TIMESLICE, 1) or self.point(Mode.MPS, 1)
            return single.aggregate_per_sec if single else None
        return None

    def bound_fraction(self, mode: Mode, concurrency: int) -> float | None:
        point = self.point(mode, concurrency)
        return stats.ratio(point.aggregate_per_sec if point else None, self.bound(concurrency))

    def to_dict(self, *, with_latencies: bool = False) -> dict[str, Any]:
        summary = []
        for mode, n, p in self.table_points():
            summary.append(
                {
                    "mode": mode,
                    "concurrency": n,
                    "individual_per_sec": p.individual_per_sec,
                    "aggregate_per_sec": p.aggregate_per_sec,
                    "scaling_efficiency": self.efficiency(mode, n),
                    "mps_over_timeslice": self.mps_ratio(n),
                    "over_timeslice": self.over_timeslice(mode, n),
                    "merged_bound_per_sec": self.bound(n),
                    "fraction_of_bound": self.bound_fraction(mode, n),
                    "latency_p50_secs": stats.finite(p.latency.p50_secs),
                    "latency_p99_secs": stats.finite(p.latency.p99_secs),
                    "gpu_sm_util_mean_pct": p.gpu.sm_util_mean_pct if p.gpu else None,
                }
            )
        return {
            "title": self.title,
            "workload": self.workload,
            "unit": self.unit,
            "created": self.created,
            "machine": dict(self.machine),
            "settings": dict(self.settings),
            "summary": summary,
            "points": [p.to_dict(with_latencies=with_latencies) for p in self.points],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BenchResult:
        return cls(
            title=str(raw.get("title", "")),
            workload=str(raw.get("workload", "")),
            points=tuple(PointResult.from_dict(p) for p in raw.get("points", ())),
            machine=dict(raw.get("machine", {})),
            settings=dict(raw.get("settings", {})),
            created=str(raw.get("created", "")),
        )
