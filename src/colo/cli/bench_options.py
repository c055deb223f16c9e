"""What every ``colo bench`` subcommand shares: its options, declared once (:class:`BenchOptions`, offered by
:func:`bench_command`), and the run they lead to for N instances of one load (:func:`run_plan`: live
progress, ``bench.json`` / ``bench.md`` / ``bench.png`` in ``--out``, the seed guide's table — mode |
individual | aggregate | scaling efficiency — with latency, the MPS / time-slicing ratio and the merged-batch
bound).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from colo.cli.common import console, err_console, safe

if TYPE_CHECKING:
    from colo.bench.results import BenchResult, PointResult
    from colo.bench.run import BenchPlan
    from colo.bench.spec import InstanceSpec

MODE_HELP = "timeslice, mps, or both: timeslice,mps"
CONC_HELP = "numbers of concurrent instances, e.g. 1,2,4,8 (1 is always measured)"


def run_plan(plan: BenchPlan, *, out: Path, as_json: bool, gpu_kind: bool, stdout: Console, stderr: Console) -> None:
    """Run ``plan`` with live progress, write the reports to ``out``, print the table (or the JSON) on
    ``stdout``; the progress goes to ``stderr`` with ``as_json``."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from colo.bench.format import point_line
    from colo.bench.harness import sigterm_as_exit
    from colo.bench.modes import Mode
    from colo.bench.report import to_json, write_reports
    from colo.bench.run import gpu_backend, run_bench

    backend = gpu_backend(required=Mode.MPS in plan.modes)
    if backend is None and gpu_kind:
        stderr.print("[yellow]no NVIDIA GPU found (NVML): running on the CPU, no GPU activity samples[/]")
    view = stderr if as_json else stdout
    steps = plan.steps()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=view, transient=True
    ) as progress:
        task = progress.add_task(f"{safe(plan.title)}: starting", total=len(steps))

        def on_message(msg: str) -> None:
            progress.update(task, description=safe(msg))

        def on_point(point: PointResult) -> None:
            progress.advance(task)
            progress.console.print(safe(point_line(point)), highlight=False)

        with sigterm_as_exit():
            result = run_bench(plan, backend=backend, progress=on_message, on_point=on_point)
    paths = write_reports([result], out)
    if as_json:
        import sys

        sys.stdout.write(to_json([result]) + "\n")
        return
    _print_table(result, stdout)
    stdout.print(safe(f"reports: {paths['json']}, {paths['md']}, {paths['png']}"), highlight=False)


def _print_table(result: BenchResult, out: Console) -> None:
    from rich.table import Table

    from colo.bench.report import scaling_row

    unit = f"{result.unit}/s"
    table = Table(title=safe(result.title))
    for col in (
        "mode",
        "N",
        f"individual {unit}",
        f"aggregate {unit}",
        "scaling eff.",
        "MPS/TS",
        "bound",
        "of bound",
        "p50 ms",
        "p99 ms",
        "SM busy",
    ):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, n, p in result.table_points():
        table.add_row(*scaling_row(result, mode, n, p))
    out.print(table)


# --- shared options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    """The options every ``colo bench`` subcommand shares, declared once (:data:`_SHARED`).

    A subcommand that does not offer one gets the default here (``cmd`` and ``http`` have no merged-batch
    bound, ``http`` no MPS limits and mode ``external``).
    """

    mode: str = "timeslice,mps"
    concurrency: str = "1,2,4,8"
    duration: float = 10.0
    out: Path = Path("bench-out")
    gpu: int = 0
    thread_pct: str | None = None
    mem_limit: str | None = None
    bound: bool = False
    as_json: bool = False

    def run(self, spec: InstanceSpec, title: str) -> None:
        """N copies of ``spec`` at each concurrency, in each mode: run, write the reports, print."""
        from colo.bench.options import parse_int_list, parse_limits, parse_modes
        from colo.bench.run import BenchPlan

        plan = BenchPlan(
            title,
            base=spec,
            modes=parse_modes(self.mode),
            concurrencies=parse_int_list(self.concurrency, "--concurrency"),
            merged_bound=self.bound,
            limits=parse_limits(self.thread_pct, self.mem_limit),
            gpu_index=self.gpu,
        )
        gpu_kind = spec.kind in ("encoder", "decode", "hf_decode") and spec.params.get("device", "auto") != "cpu"
        run_plan(plan, out=self.out, as_json=self.as_json, gpu_kind=gpu_kind, stdout=console, stderr=err_console)


_SHARED: dict[str, tuple[Any, Callable[..., Any]]] = {
    "mode": (str, lambda default="timeslice,mps": typer.Option(default, "--mode", help=MODE_HELP)),
    "concurrency": (
        str,
        lambda default="1,2,4,8", help=CONC_HELP: typer.Option(default, "--concurrency", "-n", help=help),
    ),
    "duration": (float, lambda: typer.Option(10.0, "--duration", min=0.1, help="timed window per point, seconds")),
    "out": (
        Path,
        lambda: typer.Option(Path("bench-out"), "--out", help="directory for bench.json, bench.md, bench.png"),
    ),
    "gpu": (int, lambda: typer.Option(0, "--gpu", help="NVML index of the GPU")),
    "thread_pct": (
        str | None,
        lambda: typer.Option(
            None,
            "--thread-pct",
            help="MPS: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE per instance: 50, or 25,75 (i-th instance)",
        ),
    ),
    "mem_limit": (
        str | None,
        lambda: typer.Option(None, "--mem-limit", help="MPS: pinned memory limit per instance: 4GiB, or 2GiB,6GiB"),
    ),
    "bound": (
        bool,
        lambda: typer.Option(True, "--bound/--no-bound", help="also run one process with the merged batch"),
    ),
    "as_json": (
        bool,
        lambda: typer.Option(False, "--json", help="print the results as JSON (progress goes to stderr)"),
    ),
}
ALL_SHARED = tuple(_SHARED)
#: What ``colo bench forwards`` and ``colo bench agents`` offer: a config's agents together, so no counts of
#: instances, no per-instance MPS limits, no merged batch.
AGENTS_SHARED = ("mode", "duration", "out", "gpu", "as_json")


def bench_command(
    shared: tuple[str, ...] = ALL_SHARED, **option_args: dict[str, Any]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The function as a ``colo bench`` subcommand (``colo.cli.bench_cmd`` registers it under its name): its
    own options plus the ``shared`` ones (``option_args`` changes one's default or help, e.g.
    ``concurrency={"default": "1,2,3"}``). The function gets the shared values as its first argument, a
    :class:`BenchOptions`."""

    def command_for(fn: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        hints = typing.get_type_hints(fn)
        params = own + [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                default=_SHARED[key][1](**option_args.get(key, {})),
                annotation=_SHARED[key][0],
            )
            for key in shared
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            opts = BenchOptions(**{k: kwargs.pop(k) for k in shared})
            fn(opts, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: hints.get(p.name, p.annotation) for p in params}
        return command

    return command_for
