"""Benchmark reports: JSON (everything, with machine facts), Markdown (the seed guide's table and more),
PNG (aggregate throughput and scaling efficiency against N, both modes, with the merged-batch bound).

Several runs can go in one file of each kind (the GPU script bundles its parts).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from colo import units
from colo.bench import format as fmt
from colo.bench.modes import Mode, label
from colo.bench.results import BenchResult, PointResult
from colo.files import write_atomic


def to_json(results: Sequence[BenchResult], *, with_latencies: bool = False) -> str:
    """All runs as one JSON document: ``{"runs": [...]}`` (latency lists only when asked; summaries always)."""
    return json.dumps({"runs": [r.to_dict(with_latencies=with_latencies) for r in results]}, indent=1, default=str)


def load_json(text: str) -> list[BenchResult]:
    """Runs from :func:`to_json` output (or a single run's dict). Raises ValueError for other JSON."""
    raw = json.loads(text)
    if isinstance(raw, dict) and "runs" in raw:
        return [BenchResult.from_dict(r) for r in raw["runs"]]
    if isinstance(raw, dict) and "points" in raw:
        return [BenchResult.from_dict(raw)]
    raise ValueError("not a colo bench result (expected a 'runs' list)")


def machine_line(result: BenchResult) -> str:
    """GPU, driver, CUDA, torch in one line."""
    m = result.machine
    parts = []
    if m.get("gpu"):
        mem = m.get("gpu_memory_bytes")
        parts.append(f"{m['gpu']}" + (f" ({units.format_size(int(mem))})" if mem else ""))
    if m.get("driver"):
        parts.append(f"driver {m['driver']}")
    if m.get("cuda_driver"):
        parts.append(f"CUDA {m['cuda_driver']}")
    if m.get("torch"):
        parts.append(f"torch {m['torch']}" + (f" (CUDA {m['torch_cuda']})" if m.get("torch_cuda") else ""))
    return ", ".join(parts) or "unknown machine"


def scaling_row(result: BenchResult, mode: Mode, n: int, point: PointResult) -> list[str]:
    """One line of the seed's table: mode, N, individual, aggregate, scaling efficiency, MPS / time-slicing,
    merged bound, fraction of the bound, p50 ms, p99 ms, SM busy (the Markdown report and the terminal)."""
    lat = point.latency
    return [
        label(mode),
        str(n),
        fmt.num(point.individual_per_sec),
        fmt.num(point.aggregate_per_sec),
        fmt.pct(result.efficiency(mode, n)),
        fmt.ratio(result.mps_ratio(n)) if mode == Mode.MPS else fmt.MISSING,
        fmt.num(result.bound(n)),
        fmt.pct(result.bound_fraction(mode, n)),
        fmt.ms(lat.p50_secs),
        fmt.ms(lat.p99_secs),
        fmt.sm_busy(point),
    ]


def scaling_table(result: BenchResult) -> list[str]:
    """The seed's table (mode | individual | aggregate | scaling efficiency) plus the bound, latency, GPU."""
    unit = f"{result.unit}/s"
    header = [
        "mode",
        "N",
        f"individual ({unit})",
        f"aggregate ({unit})",
        "scaling efficiency",
        "MPS / time-slicing",
        f"merged bound ({unit})",
        "of bound",
        "p50 ms",
        "p99 ms",
        "GPU SM busy",
    ]
    return fmt.markdown_table(header, [scaling_row(result, mode, n, p) for mode, n, p in result.table_points()])


def instance_table(result: BenchResult) -> list[str]:
    """Per instance (agent) rates for each mode: for a fixed set of different instances."""
    modes = result.modes()
    header = "| instance | " + " | ".join(f"{label(m)} ({result.unit}/s) | p50 ms | p99 ms" for m in modes)
    lines = [header + " |", "|---|" + "---|---|---|" * len(modes)]
    first = result.point(modes[0], result.concurrencies(modes[0])[0]) if modes else None
    if first is None:
        return []
    for inst in first.instances:
        cells = [inst.label or str(inst.index)]
        for m in modes:
            p = result.point(m, result.concurrencies(m)[0])
            match = next((i for i in p.instances if i.index == inst.index), None) if p else None
            if match is None:
                cells += ["–", "–", "–"]
                continue
            from colo.bench import stats

            lat = stats.summarize_latencies(match.latencies_secs)
            cells += [fmt.num(match.per_sec), fmt.ms(lat.p50_secs), fmt.ms(lat.p99_secs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def activity_lines(result: BenchResult) -> list[str]:
    """Why MPS did or did not help: device utilisation per point, per-instance memory."""
    out: list[str] = []
    for p in result.points:
        if p.gpu is None or not p.gpu.samples:
            continue
        mem = p.gpu.process_memory_max_bytes()
        mem_text = ", ".join(units.format_size(v) for v in mem.values()) if mem else "–"
        out.append(
            f"- {label(p.mode)} N={p.concurrency}: SM busy {fmt.num(p.gpu.sm_util_mean_pct, 0)} %, "
            f"memory controller {fmt.num(p.gpu.mem_util_mean_pct, 0)} %, per-instance memory {mem_text}"
            + f" ({len(p.gpu.samples)} samples)"
        )
    if out:
        out.append("- NVML gave device-level utilisation only (no per-process SM %); per-instance numbers are memory.")
    return out


def bandwidth_line(result: BenchResult) -> str | None:
    """For decode runs: one stream's tokens/s against the memory-bandwidth bound.

    The bound uses the highest copy bandwidth any instance measured (instances that started together measured
    it while sharing the GPU; a lone one — N = 1 alone, or a merged-batch process — measures it cleanly).
    """
    infos = [i.info for p in result.points for i in p.instances if i.info.get("copy_bandwidth_bytes_per_sec")]
    single = result.point(Mode.TIMESLICE, 1) or result.point(Mode.MPS, 1)
    if not infos or single is None or not single.instances:
        return None
    bandwidth = max(float(i["copy_bandwidth_bytes_per_sec"]) for i in infos)
    first = single.instances[0]
    step_bytes = first.info.get("bytes_read_per_step")
    batch = int(first.info.get("batch_size", 1) or 1)
    if not step_bytes:
        return None
    bound = bandwidth / float(step_bytes)
    per_stream = first.per_sec / batch
    return (
        f"- One stream: {per_stream:.1f} tok/s = {100 * per_stream / bound:.0f} % of the memory-bandwidth bound "
        f"({bound:.0f} tok/s = copy bandwidth {bandwidth / 1e12:.2f} TB/s / {float(step_bytes) / 1e9:.1f} GB "
        f"read per token); CUDA graph: {first.info.get('cuda_graphs')}."
    )


def reading(result: BenchResult) -> list[str]:
    """Plain sentences derived from the numbers (no judgement beyond them)."""
    out: list[str] = []
    line = bandwidth_line(result)
    if line:
        out.append(line)
    for p in result.points:
        server = [i.server_per_sec for i in p.instances if i.server_per_sec is not None]
        if server:
            out.append(
                f"- {label(p.mode)} N={p.concurrency}: the server's own rate (tokens over the "
                f"server-reported generation time: Ollama eval_duration, llama-server timings.predicted_ms) {sum(server) / len(server):.1f} tok/s per client, "
                f"{sum(server):.1f} summed"
            )
    levels = [n for n in result.concurrencies(Mode.MPS) if n > 1 and result.mps_ratio(n) is not None]
    for n in levels:
        r = result.mps_ratio(n)
        assert r is not None
        verdict = "faster than" if r > 1.05 else "slower than" if r < 0.95 else "on par with"
        out.append(f"- N={n}: MPS {fmt.ratio(r)} time-slicing ({verdict}).")
    single = result.point(Mode.TIMESLICE, 1)
    if single and single.gpu and single.gpu.sm_util_mean_pct is not None:
        sm = single.gpu.sm_util_mean_pct
        out.append(
            f"- One instance alone keeps the SMs busy {sm:.0f} % of the time: "
            + (
                "little idle GPU for MPS to fill."
                if sm >= 80
                else "room for other processes' kernels, which MPS can run concurrently."
            )
        )
    return out


def to_markdown(results: Sequence[BenchResult]) -> str:
    """Every run as a Markdown section."""
    parts: list[str] = []
    for r in results:
        parts.append(f"### {r.title}\n")
        parts.append(
            f"Workload: `{r.workload}`; {r.settings.get('duration_secs', '?')} s per point; "
            f"machine: {machine_line(r)}; {r.created}.\n"
        )
        fixed = (
            r.workload != "agents"
            and len(r.concurrencies()) == 1
            and any(len({i.label for i in p.instances}) > 1 for p in r.points)
        )
        parts.extend(scaling_table(r))
        parts.append("")
        if r.workload == "agents":
            from colo.bench.agents_report import markdown

            parts.extend(markdown(r))
            parts.append("")
        if fixed:
            parts.extend(instance_table(r))
            parts.append("")
        act = activity_lines(r)
        if act:
            parts.append("GPU activity during the timed window (NVML samples):\n")
            parts.extend(act)
            parts.append("")
        read = reading(r)
        if read:
            parts.extend(read)
            parts.append("")
    return "\n".join(parts)


def plot_png(results: Sequence[BenchResult]) -> bytes:
    """One row per run with more than one N: aggregate throughput and scaling efficiency against N for each
    mode, the merged-batch bound dashed. Returns PNG bytes (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if len(r.concurrencies()) > 1]
    rows = max(1, len(runs))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.6 * rows), squeeze=False)
    colors = {Mode.TIMESLICE: "tab:blue", Mode.MPS: "tab:orange", Mode.EXTERNAL: "tab:green"}
    for row, r in enumerate(runs):
        ax_t, ax_e = axes[row][0], axes[row][1]
        for mode in r.modes():
            ns = r.concurrencies(mode)
            agg = [r.point(mode, n).aggregate_per_sec for n in ns]  # type: ignore[union-attr]
            eff = [r.efficiency(mode, n) for n in ns]
            name = label(mode)
            ax_t.plot(ns, agg, marker="o", color=colors.get(mode), label=name)
            ax_e.plot(
                ns,
                [100 * e if e is not None else math.nan for e in eff],
                marker="o",
                color=colors.get(mode),
                label=name,
            )
        bound_ns = [n for n in r.concurrencies() if r.bound(n) is not None]
        if len(bound_ns) > 1:
            bounds = [r.bound(n) or math.nan for n in bound_ns]
            ax_t.plot(bound_ns, bounds, linestyle="--", color="gray", label="merged-batch bound")
            single = r.bound(1)
            if single:
                ax_e.plot(
                    bound_ns,
                    [100 * (r.bound(n) or math.nan) / (n * single) for n in bound_ns],
                    linestyle="--",
                    color="gray",
                    label="merged-batch bound",
                )
        ax_t.set_title(f"{r.title}: aggregate", fontsize=9)
        x_label = "clients per agent" if r.workload == "agents" else "instances N"
        ax_t.set_xlabel(x_label)
        ax_t.set_ylabel(f"{r.unit}/s")
        ax_e.set_title(f"{r.title}: scaling efficiency", fontsize=9)
        ax_e.set_xlabel(x_label)
        ax_e.set_ylabel("% of N × single")
        ax_e.axhline(100, color="lightgray", linewidth=0.8)
        for ax in (ax_t, ax_e):
            ax.set_xticks(r.concurrencies())
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if not runs:
        axes[0][0].text(0.5, 0.5, "no run with more than one N", ha="center", va="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_reports(
    results: Sequence[BenchResult], out_dir: str | Path, stem: str = "bench", *, with_latencies: bool = False
) -> dict[str, Path]:
    """Write ``<stem>.json`` (latency summaries; every request's latency only ``with_latencies``: tiny models
    make hundreds of thousands), ``<stem>.md`` and ``<stem>.png`` under ``out_dir``.

    Returns the paths by kind. Raises ConfigError when the directory is not writable.
    """
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    paths["json"] = write_atomic(out / f"{stem}.json", to_json(results, with_latencies=with_latencies))
    paths["md"] = write_atomic(out / f"{stem}.md", to_markdown(results))
    paths["png"] = write_atomic(out / f"{stem}.png", plot_png(results))
    return paths
