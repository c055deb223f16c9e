"""The tables of ``colo bench agents`` (Markdown and the terminal's rows): per point, per GPU, per agent, lone
requests.

Read from a :class:`BenchResult` of workload ``agents`` (:mod:`colo.bench.agents_run`): an instance per agent
whose ``info`` carries its errors by status, 503-with-Retry-After apart, its NVML peak and limit, and the GPU
colo runs it on (``gpu``, a ``GpuSlot.key``; None when not known); the point's ``load`` the load generator's CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from colo.bench import format as fmt
from colo.bench import stats
from colo.bench.modes import Mode, label
from colo.bench.results import BenchResult, InstanceResult, PointResult


def hard_errors(point: PointResult) -> int:
    """Errors other than 503-with-Retry-After, over every agent of the point."""
    return sum(int(i.info.get("hard_errors", 0)) for i in point.instances)


def retry_after(point: PointResult) -> int:
    return sum(int(i.info.get("retry_after_503", 0)) for i in point.instances)


def requests(inst: InstanceResult) -> int:
    """Successful requests (the stored count when the JSON report dropped the latency list)."""
    return int(inst.info.get("requests", inst.requests))


def requests_per_sec(point: PointResult) -> float:
    return sum(requests(i) / i.elapsed_secs for i in point.instances if i.elapsed_secs > 0)


def memory_cell(inst: InstanceResult) -> str:
    """``peak / limit`` (``!`` when over), ``–`` parts unknown."""
    peak, limit = inst.info.get("peak_memory_bytes"), inst.info.get("limit_bytes")
    text = f"{fmt.size(peak)} / {fmt.size(limit)}"
    return text + " **over**" if peak is not None and limit is not None and peak > limit else text


def within_limits(point: PointResult) -> bool | None:
    """Every agent's peak ≤ its limit; None when no agent had both known."""
    seen = [i.info.get("within_limit") for i in point.instances if i.info.get("within_limit") is not None]
    return all(bool(v) for v in seen) if seen else None


def errors_cell(inst: InstanceResult) -> str:
    errors: Mapping[str, Any] = inst.info.get("errors") or {}
    hard = {k: v for k, v in errors.items() if k != "503-retry-after"}
    return ", ".join(f"{k}: {v}" for k, v in sorted(hard.items())) or "0"


def cpu_cell(point: PointResult) -> str:
    cores = point.load.get("cpu_cores_used")
    if cores is None:
        return "–"
    host = int(point.load.get("host_cpus", 0))
    procs = int(point.load.get("processes", 1))
    busiest = point.load.get("max_process_cores")
    text = f"{cores:.2f} core" + (f" of {host}" if host else "")
    if procs > 1 and busiest is not None:
        text += f" ({procs} processes, busiest {busiest:.2f})"
    return text


#: The ``gpu`` of the sum over every GPU in :func:`gpu_totals` (a GPU key has a colon: ``local:0``).
ALL_GPUS = "all"


@dataclass(frozen=True)
class GpuTotal:
    """One GPU's agents over one point (or, ``gpu`` = :data:`ALL_GPUS`, every agent): their summed rates
    (they ran together over the same window), latency over all their requests, errors."""

    gpu: str
    agents: tuple[str, ...]
    seq_per_sec: float
    requests_per_sec: float
    p50_secs: float | None
    p99_secs: float | None
    hard_errors: int
    retry_after_503: int

    @staticmethod
    def of(gpu: str, instances: Sequence[InstanceResult]) -> GpuTotal:
        pooled = [x for i in instances for x in i.latencies_secs]
        lat = stats.summarize_latencies(pooled)
        return GpuTotal(
            gpu,
            tuple(i.label for i in instances),
            sum(i.per_sec for i in instances),
            sum(requests(i) / i.elapsed_secs for i in instances if i.elapsed_secs > 0),
            stats.finite(lat.p50_secs),
            stats.finite(lat.p99_secs),
            sum(int(i.info.get("hard_errors", 0)) for i in instances),
            sum(int(i.info.get("retry_after_503", 0)) for i in instances),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "agents": list(self.agents),
            "seq_per_sec": self.seq_per_sec,
            "requests_per_sec": self.requests_per_sec,
            "p50_secs": self.p50_secs,
            "p99_secs": self.p99_secs,
            "hard_errors": self.hard_errors,
            "retry_after_503": self.retry_after_503,
        }


def gpu_totals(point: PointResult) -> tuple[GpuTotal, ...]:
    """Each GPU's aggregate (by GPU key), then the sum over all of them (:data:`ALL_GPUS`, the point's
    aggregate); empty when no agent's GPU is known (``--attach`` URLs without a state dir)."""
    by_gpu: dict[str, list[InstanceResult]] = {}
    for i in point.instances:
        gpu = i.info.get("gpu")
        by_gpu.setdefault(str(gpu) if gpu else "unknown", []).append(i)
    if set(by_gpu) <= {"unknown"}:
        return ()
    return (*(GpuTotal.of(g, by_gpu[g]) for g in sorted(by_gpu)), GpuTotal.of(ALL_GPUS, point.instances))


def gpu_totals_of(points: Iterable[PointResult]) -> list[dict[str, Any]]:
    """``settings["by_gpu"]`` of a run (what ``--json`` carries): per point its mode, clients per agent, each
    GPU's total and the sum (``all``); points whose agents' GPUs are unknown are left out."""
    out = []
    for p in points:
        totals = gpu_totals(p)
        if totals:
            out.append(
                {
                    "mode": str(p.mode),
                    "clients": p.concurrency,
                    "gpus": [t.to_dict() for t in totals[:-1]],
                    "all": totals[-1].to_dict(),
                }
            )
    return out


GPU_HEADER = ("mode", "clients/agent", "GPU", "agents", "aggregate seq/s", "requests/s", "p50 ms", "p99 ms", "errors")


def gpu_rows(result: BenchResult) -> list[list[str]]:
    """A row per GPU per point, then the point's sum (``all GPUs``); none unless two or more GPUs were seen
    (on one GPU the point table says it all). From ``settings["by_gpu"]`` (kept in the JSON report)."""
    data: Sequence[Mapping[str, Any]] = result.settings.get("by_gpu") or gpu_totals_of(result.points)
    if len({g["gpu"] for d in data for g in d["gpus"]}) < 2:
        return []
    rows = []
    for d in data:
        for gpu, t in [*((str(g["gpu"]), g) for g in d["gpus"]), ("**all GPUs**", d["all"])]:
            rows.append(
                [
                    label(d["mode"]),
                    str(d["clients"]),
                    gpu,
                    str(len(t["agents"])),
                    fmt.num(t["seq_per_sec"]),
                    fmt.num(t["requests_per_sec"]),
                    fmt.ms(t["p50_secs"]),
                    fmt.ms(t["p99_secs"]),
                    str(t["hard_errors"]),
                ]
            )
    return rows


def point_rows(result: BenchResult) -> list[list[str]]:
    """mode, clients, aggregate seq/s, requests/s, p50, p99, errors, 503 Retry-After, peak ≤ limit, CPU."""
    rows = []
    for mode, n, p in result.table_points():
        ok = within_limits(p)
        rows.append(
            [
                label(mode),
                str(n),
                fmt.num(p.aggregate_per_sec),
                fmt.num(requests_per_sec(p)),
                fmt.ms(p.latency.p50_secs),
                fmt.ms(p.latency.p99_secs),
                str(hard_errors(p)),
                str(retry_after(p)),
                "–" if ok is None else "yes" if ok else "**no**",
                cpu_cell(p),
            ]
        )
    return rows


#: With ``policy.mps: auto`` a GPU's lone agent runs time-sliced: it should be within this of time-slicing.
AUTO_TOLERANCE = 0.02
AUTO_HEADER = ("clients/agent", "mps: auto seq/s", "time-slicing seq/s", "auto / time-slicing", "within 2 %")


def auto_rows(result: BenchResult) -> list[list[str]]:
    """``mps: auto`` against plain time-slicing per client count (both modes measured): the ratio of their
    aggregates and whether it is within :data:`AUTO_TOLERANCE` (for a one-agent config: auto runs no MPS)."""
    rows = []
    for n in result.concurrencies(Mode.AUTO):
        auto, ts = result.point(Mode.AUTO, n), result.point(Mode.TIMESLICE, n)
        ratio = result.over_timeslice(Mode.AUTO, n)
        if auto is None or ts is None or ratio is None:
            continue
        ok = abs(ratio - 1.0) <= AUTO_TOLERANCE
        rows.append(
            [str(n), fmt.num(auto.aggregate_per_sec), fmt.num(ts.aggregate_per_sec), f"{ratio:.3f}×", "yes" if ok else "**no**"]
        )
    return rows


POINT_HEADER = (
    "mode",
    "clients/agent",
    "aggregate seq/s",
    "requests/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "503 Retry-After",
    "peak ≤ limit",
    "load generator CPU",
)
AGENT_HEADER = (
    "mode",
    "clients",
    "agent",
    "seq/s",
    "requests/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "503 RA",
    "peak / limit",
)


def agent_rows(result: BenchResult) -> list[list[str]]:
    rows = []
    for p in result.points:
        for i in p.instances:
            lat = i.info.get("latency") or i.to_dict(with_latencies=False)["latency"]
            rows.append(
                [
                    label(p.mode),
                    str(p.concurrency),
                    i.label,
                    fmt.num(i.per_sec),
                    fmt.num(requests(i) / i.elapsed_secs if i.elapsed_secs > 0 else math.nan),
                    fmt.ms(lat["p50_secs"]),
                    fmt.ms(lat["p99_secs"]),
                    errors_cell(i),
                    str(i.info.get("retry_after_503", 0)),
                    memory_cell(i),
                ]
            )
    return rows


def lone_rows(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """Each agent alone (one client, one row per request): p50/p99 per mode."""
    lone: Mapping[str, Mapping[str, Mapping[str, Any]]] = result.settings.get("lone") or {}
    modes = list(lone)
    header = ["agent"] + [f"{label(m)} {q}" for m in modes for q in ("p50 ms", "p99 ms")]
    agents = sorted({a for m in modes for a in lone[m]})
    rows = [[a] + [fmt.ms(lone[m].get(a, {}).get(q)) for m in modes for q in ("p50_secs", "p99_secs")] for a in agents]
    return header, rows


def terminal_tables(result: BenchResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables ``colo bench agents`` prints, as (title, header, rows), those without rows left out."""
    lone_header, lone = lone_rows(result)
    tables = [
        (result.title, list(POINT_HEADER), point_rows(result)),
        ("per GPU (each GPU's agents together, then the sum)", list(GPU_HEADER), gpu_rows(result)),
        ("per agent", list(AGENT_HEADER), agent_rows(result)),
        ("a lone request", lone_header, lone),
        ("mps: auto against time-slicing", list(AUTO_HEADER), auto_rows(result)),
    ]
    return [t for t in tables if t[2]]


def point_line(point: PointResult) -> str:
    """One measured point in a line, as progress shows it:
    ``mps 3 client(s)/agent: 812.4 seq/s, p99 41.2 ms, errors 0``."""
    return (
        f"{point.mode} {point.concurrency} client(s)/agent: {point.aggregate_per_sec:,.1f} seq/s, "
        f"p99 {1000 * point.latency.p99_secs:.1f} ms, errors {hard_errors(point)}"
    )


def markdown(result: BenchResult) -> list[str]:
    """The agents' tables as Markdown lines."""
    lines = ["Through the agents' HTTP APIs (errors exclude 503 with Retry-After, counted apart):", ""]
    lines += fmt.markdown_table(POINT_HEADER, point_rows(result))
    by_gpu = gpu_rows(result)
    if by_gpu:
        lines += ["", "Per GPU (each GPU's agents together, then the sum over the GPUs):", ""]
        lines += fmt.markdown_table(GPU_HEADER, by_gpu)
    lines += ["", "Per agent:", ""]
    lines += fmt.markdown_table(AGENT_HEADER, agent_rows(result))
    header, rows = lone_rows(result)
    if rows:
        lines += ["", "A lone request (each agent alone, one client, one row):", "", *fmt.markdown_table(header, rows)]
    return lines

