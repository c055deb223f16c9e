"""``colo bench agents``: the agents of a colo.yaml through their HTTP APIs, as users reach them — colo runs
them as ``colo up`` does (or finds them running) and N clients per agent load them all together
(:mod:`colo.bench.agents_run`); the view prints a line per point and the tables of
:mod:`colo.bench.agents_report`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from colo.cli.bench_options import AGENTS_SHARED, BenchOptions, bench_command
from colo.cli.common import console, err_console, safe

if TYPE_CHECKING:
    from colo.bench.agents_run import AgentsBench
    from colo.bench.results import BenchResult, PointResult


@bench_command(AGENTS_SHARED)
def bench_agents(
    opts: BenchOptions,
    config: Path | None = typer.Argument(None, help="colo.yaml whose agents colo starts (or, attached, finds)"),
    clients: str = typer.Option("1,3,16", "--clients", "-n", help="concurrent HTTP clients per agent, e.g. 1,3,16"),
    batch: int = typer.Option(8, "--batch", min=1, help="sequences per request (at most the model's batch_size)"),
    seq_len: int = typer.Option(128, "--seq-len", min=1, help="tokens per sequence (at most its max_seq_len)"),
    new_tokens: int = typer.Option(16, "--new-tokens", min=1, help="generators: tokens per request"),
    warmup: float = typer.Option(2.0, "--warmup", min=0.0, help="seconds of load before each timed window"),
    agents: str | None = typer.Option(None, "--agents", help="only these agents of CONFIG: critic,scout"),
    attach: str | None = typer.Option(
        None, "--attach", help="load agents already running: NAME=URL,... (or bare URLs); starts nothing"
    ),
    attach_config: bool = typer.Option(
        False, "--attach-config", help="CONFIG's agents are already running (at their ports); starts nothing"
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="attached: the running colo's state dir (agents' pids and limits)"
    ),
    lone: float = typer.Option(0.0, "--lone", min=0.0, help="then each agent alone, one row per request, SECS"),
    start_timeout: float = typer.Option(600.0, "--start-timeout", min=1.0, help="seconds to wait for RUNNING"),
    procs: int = typer.Option(
        0, "--procs", min=0, max=64, help="load-generator processes (0: one per 4 CPUs, at most one per agent)"
    ),
) -> None:
    """The agents of CONFIG through their HTTP APIs, as users reach them: N clients per agent, all together.

    For each --mode colo runs CONFIG as `colo up` does (`--no-mps` for timeslice) in a fresh state dir, waits
    until every agent is RUNNING, sends `POST /infer` (--batch × --seq-len, clamped to each model's worst case)
    from N clients per agent for --duration seconds at each --clients count, and stops them. With --attach or
    --attach-config it loads agents already running (any build) and --mode only labels the results.
    """
    from colo.bench.agents_run import AgentsBench, choose_targets, load_processes
    from colo.bench.options import parse_agent_modes, parse_int_list
    from colo.spec.load import load_config

    counts = parse_int_list(clients, "--clients")
    modes = parse_agent_modes(opts.mode)
    targets = choose_targets(
        load_config(config) if config is not None else None,
        attach=[u.strip() for u in (attach or "").split(",") if u.strip()],
        attach_config=attach_config,
        modes=modes,
        batch=batch,
        seq_len=seq_len,
        new_tokens=new_tokens,
        only=[a.strip() for a in (agents or "").split(",") if a.strip()],
    )
    title = f"{config.name if config else 'attached agents'}: {len(targets)} agents through HTTP, {batch}×{seq_len}"
    bench = AgentsBench(
        title,
        config,
        targets,
        clients=counts,
        modes=modes,
        window_secs=opts.duration,
        warmup_secs=warmup,
        lone_secs=lone,
        attached=bool(attach) or attach_config,
        state_dir=state_dir,
        start_timeout_secs=start_timeout,
        gpu_index=opts.gpu,
        processes=procs or load_processes(len(targets), os.cpu_count()),
        settings={"batch": batch, "seq_len": seq_len, "new_tokens": new_tokens},
    )
    run_agents(bench, out=opts.out, as_json=opts.as_json, stdout=console, stderr=err_console)


def run_agents(bench: AgentsBench, *, out: Path, as_json: bool, stdout: Console, stderr: Console) -> None:
    """Run ``bench`` with a line per message and point, write the reports to ``out`` (also of a run cut
    short), print its tables (or the JSON) on ``stdout``; the lines go to ``stderr`` with ``as_json``."""
    from rich.table import Table

    from colo.bench.agents_report import point_line as agents_point_line
    from colo.bench.agents_report import terminal_tables
    from colo.bench.agents_run import run_agents_bench
    from colo.bench.harness import sigterm_as_exit
    from colo.bench.report import to_json, write_reports
    from colo.bench.run import gpu_backend

    view = stderr if as_json else stdout

    def on_message(msg: str) -> None:
        view.print(safe(msg), highlight=False)

    def on_point(point: PointResult) -> None:
        view.print(safe(agents_point_line(point)), highlight=False)

    def on_result(partial: BenchResult) -> None:  # a run cut short keeps what it measured
        write_reports([partial], out, stem="agents")

    with sigterm_as_exit():
        result = run_agents_bench(
            bench, backend=gpu_backend(required=False), progress=on_message, on_point=on_point, on_result=on_result
        )
    paths = write_reports([result], out, stem="agents")
    if as_json:
        import sys

        sys.stdout.write(to_json([result]) + "\n")
        return
    for title, header, rows in terminal_tables(result):
        table = Table(title=safe(title))
        for col in header:
            table.add_column(col, justify="left" if col in ("mode", "agent") else "right")
        for row in rows:
            table.add_row(*(safe(c.replace("**", "")) for c in row))
        stdout.print(table)
    stdout.print(safe(f"reports: {paths['json']}, {paths['md']}, {paths['png']}"), highlight=False)
