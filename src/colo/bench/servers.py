"""``colo bench servers``: N clients spread over one or more running HTTP servers, recorded as one setup.

Client ``i`` talks to ``urls[i % len(urls)]``: three URLs and N = 1, 2, 3 measure one, two and three separate
servers (one client each); one URL measures one server with N parallel slots (llama-server ``-np N``,
Ollama's ``OLLAMA_NUM_PARALLEL``). How the servers were started is the caller's business (``colo up`` under
MPS, or without it); ``setup`` names it and becomes the points' mode — ``mps``, ``timeslice`` or
``batching`` — so one :class:`~colo.bench.results.BenchResult` holds the guide's whole table: scaling
efficiency within a setup, MPS / time-slicing at each N, and ``colo advise`` reads it.

Each N is one fixed set of instances (:func:`colo.bench.run.run_bench`), started, warmed (one request
each) and measured together. With ``append``, the points of earlier setups in the same report are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from colo.bench.modes import Mode
from colo.bench.results import BenchResult, PointResult
from colo.bench.spec import InstanceSpec
from colo.errors import UsageError

if TYPE_CHECKING:
    from colo.gpu.nvml import GpuBackend

#: What the servers were: separate servers under MPS, separate servers time-sliced, one server with N slots.
SETUPS: tuple[Mode, ...] = (Mode.MPS, Mode.TIMESLICE, Mode.BATCHING)
SETUP_NAMES: dict[str, str] = {
    Mode.MPS: "separate servers, MPS",
    Mode.TIMESLICE: "separate servers, time-sliced",
    Mode.BATCHING: "one server, N slots",
}


def client_specs(urls: Sequence[str], n: int, params: dict[str, Any], duration_secs: float) -> list[InstanceSpec]:
    """N HTTP clients; client ``i`` talks to ``urls[i % len(urls)]``, labelled ``c<i>@<host:port>``."""
    if not urls:
        raise UsageError("name at least one server URL")
    out = []
    for i in range(n):
        url = urls[i % len(urls)]
        out.append(
            InstanceSpec(
                "http", {**params, "url": url}, label=f"c{i}@{urlsplit(url).netloc}", duration_secs=duration_secs
            )
        )
    return out


def merge_into(previous: BenchResult | None, new: BenchResult) -> BenchResult:
    """``new``'s points added to ``previous``'s (a point of the same mode and N is replaced)."""
    if previous is None:
        return new
    keep = [p for p in previous.points if new.point(p.mode, p.concurrency) is None]
    setups = dict(previous.settings.get("setups", {}))
    setups.update(new.settings.get("setups", {}))
    return dataclasses.replace(
        previous,
        points=(*keep, *new.points),
        settings={**previous.settings, "setups": setups},
        machine=previous.machine or new.machine,
    )


def run_servers(
    urls: Sequence[str],
    levels: Sequence[int],
    params: dict[str, Any],
    *,
    setup: str,
    duration_secs: float,
    title: str,
    backend: GpuBackend | None = None,
    gpu_index: int = 0,
    progress: Callable[[str], None] | None = None,
    on_point: Callable[[PointResult], None] | None = None,
) -> BenchResult:
    """Measure ``setup`` at every N of ``levels`` (1 added). Raises UsageError / BenchError."""
    from colo.bench.run import BenchPlan, run_bench

    if setup not in SETUPS:
        raise UsageError(f"setup {setup!r}: use one of {', '.join(SETUPS)}")
    points: list[PointResult] = []
    first: BenchResult | None = None
    for n in sorted({1, *levels}):
        plan = BenchPlan(
            f"{title}: {SETUP_NAMES[setup]} N={n}",
            fixed=tuple(client_specs(urls, n, params, duration_secs)),
            modes=(Mode.EXTERNAL,),
            gpu_index=gpu_index,
        )
        run = run_bench(plan, backend=backend, progress=progress)
        first = first or run
        for p in run.points:
            point = dataclasses.replace(p, mode=Mode(setup))
            points.append(point)
            if on_point is not None:
                on_point(point)
    assert first is not None
    return BenchResult(
        title=title,
        workload=f"http({params.get('api')}, {params.get('max_tokens')} tokens per request)",
        points=tuple(points),
        machine=first.machine,
        settings={
            "duration_secs": duration_secs,
            "request": {k: v for k, v in params.items() if k != "api_key"},
            "setups": {setup: {"urls": list(urls), "name": SETUP_NAMES[setup]}},
        },
        created=first.created,
    )


def server_rate(point: PointResult) -> tuple[float | None, float | None]:
    """(mean per-client, summed) server-reported tokens/s of a point; (None, None) without timings."""
    rates = [i.server_per_sec for i in point.instances if i.server_per_sec is not None]
    if not rates:
        return None, None
    return sum(rates) / len(rates), sum(rates)


def table_rows(result: BenchResult, memory: Mapping[str, Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """The guide's table as data: per setup and N, client-counted and server-reported tok/s, efficiency,
    MPS / time-slicing, p50/p99 seconds per request, and ``memory[setup]``: the servers' GPU memory (bytes,
    e.g. from ``colo status``; the benchmark itself only sees its clients)."""
    rows = []
    for mode, n, p in result.table_points():
        per_client, summed = server_rate(p)
        rows.append(
            {
                "setup": mode,
                "setup_name": SETUP_NAMES.get(mode, mode),
                "streams": n,
                "per_stream_tok_per_sec": p.individual_per_sec,
                "aggregate_tok_per_sec": p.aggregate_per_sec,
                "server_per_stream_tok_per_sec": per_client,
                "server_aggregate_tok_per_sec": summed,
                "scaling_efficiency": result.efficiency(mode, n),
                "mps_over_timeslice": result.mps_ratio(n) if mode == Mode.MPS else None,
                "p50_secs": p.latency.p50_secs if p.latency.count else None,
                "p99_secs": p.latency.p99_secs if p.latency.count else None,
                "requests": p.latency.count,
                "server_memory_bytes": list((memory or {}).get(mode, ())),
            }
        )
    return rows


def table_markdown(result: BenchResult, memory: Mapping[str, Sequence[int]] | None = None) -> list[str]:
    """:func:`table_rows` as a Markdown table."""

    def num(v: float | None, fmt: str = "{:.1f}") -> str:
        return fmt.format(v) if v is not None else "–"

    lines = [
        "| setup | streams | per stream tok/s | aggregate tok/s | server: per stream | server: aggregate "
        "| scaling eff. | MPS / TS | p50 s | p99 s | GPU memory per server |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table_rows(result, memory):
        mem = ", ".join(f"{b / 2**30:.2f} GiB" for b in r["server_memory_bytes"]) or "–"
        eff = r["scaling_efficiency"]
        lines.append(
            f"| {r['setup_name']} | {r['streams']} | {num(r['per_stream_tok_per_sec'])} | "
            f"{num(r['aggregate_tok_per_sec'])} | {num(r['server_per_stream_tok_per_sec'])} | "
            f"{num(r['server_aggregate_tok_per_sec'])} | {num(100 * eff if eff is not None else None, '{:.0f} %')} | "
            f"{num(r['mps_over_timeslice'], '{:.2f}x')} | {num(r['p50_secs'], '{:.2f}')} | "
            f"{num(r['p99_secs'], '{:.2f}')} | {mem} |"
        )
    return lines


def write_servers_reports(result: BenchResult, out: Path) -> None:
    """``bench.json``/``bench.md``/``bench.png`` in ``out`` (:func:`colo.bench.report.write_reports`) and the
    guide's table as ``servers.md``."""
    from colo.bench.report import write_reports
    from colo.files import write_atomic

    write_reports([result], out)
    write_atomic(out / "servers.md", "\n".join([f"## {result.title}", "", *table_markdown(result), ""]))
