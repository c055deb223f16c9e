"""``colo capacity`` and ``colo advise``: how many instances of a model fit on one GPU, and whether a colo.yaml
wants MPS, separate servers (time-slicing) or MIG — from the plan, a ``colo bench`` result and the usage
history ``colo up`` recorded (:mod:`colo.bench.capacity`, :mod:`colo.bench.advise`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from colo.cli.common import console, print_json, safe
from colo.errors import UsageError

if TYPE_CHECKING:
    from colo.bench.advise import Advice


def capacity_command(
    model: str = typer.Argument(..., help="model id (catalog or config), or a name with --memory"),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU name, e.g. H100, 'RTX 3090', A100-40GB"),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="GPU memory, e.g. 80GiB"),
    memory: str | None = typer.Option(None, "--memory", help="the model's requirement, e.g. 4.9GiB"),
    config: Path | None = typer.Option(None, "--config", "-c", help="colo.yaml: the model's memory and policy"),
    dtype: str = typer.Option("float32", "--dtype", help="for the estimate: float32, float16, bfloat16"),
    batch: int = typer.Option(1, "--batch", min=1, help="for the estimate: worst-case batch"),
    seq: int = typer.Option(512, "--seq", min=1, help="for the estimate: worst-case tokens (prompt)"),
    new_tokens: int = typer.Option(0, "--new-tokens", min=0, help="for the estimate: generated tokens"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """How many instances of MODEL fit on one GPU: theoretically, with margins, and under the client cap.

    The requirement: --memory, else the model's declared memory in --config, else colo's offline estimate
    for --dtype / --batch / --seq (catalog models).
    """
    from colo.bench.capacity import capacity_for, resolve_gpu_memory, resolve_requirement

    cfg = None
    if config is not None:
        from colo.spec.load import load_config

        cfg = load_config(config)
    try:
        requirement, source = resolve_requirement(
            model, memory=memory, config=cfg, dtype=dtype, batch_size=batch, seq_len=seq, new_tokens=new_tokens
        )
        gpu_name, gpu_bytes = resolve_gpu_memory(gpu=gpu, gpu_memory=gpu_memory, config=cfg)
        answer = capacity_for(
            model, requirement, gpu_name, gpu_bytes, policy=cfg.policy if cfg else None, requirement_source=source
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if as_json:
        print_json(answer.to_dict())
        return
    for line in answer.lines():
        console.print(safe(line), highlight=False)


def _history(cfg: Any, state_dir: Path | None, since: str | None) -> list[Any]:
    """The usage history of the state dir (none when colo never ran there)."""
    import time

    from colo.cli.tune_cmd import parse_since
    from colo.supervise.statedir import StateDirPaths, resolve_state_dir
    from colo.supervise.store import Store

    secs = parse_since(since)
    store = Store.open_existing(StateDirPaths(resolve_state_dir(cfg, state_dir)).db)
    if store is None:
        return []
    try:
        return store.usage(since=time.time() - secs if secs else 0.0)
    finally:
        store.close()


def advise_command(
    config: Path = typer.Argument(..., help="colo.yaml"),
    bench: Path | None = typer.Option(None, "--bench", help="bench.json from `colo bench` on this GPU"),
    gpu: list[str] = typer.Option([], "--gpu", help="plan for this GPU instead of the config's, e.g. 80GiB"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Read the usage history of this state dir (default: the config's)."
    ),
    since: str | None = typer.Option(None, "--since", help="Only usage history newer than this: '30m', '7d'."),
) -> None:
    """MPS, separate servers (time-slicing) or MIG for CONFIG, with the reasons that applied (from the plan,
    a `colo bench` result, and the usage history `colo up` recorded in the state dir, when there is one)."""
    from colo.bench.advise import advise
    from colo.bench.options import load_results
    from colo.cli.plan_cmd import load_plannable
    from colo.supervise import planning

    cfg = load_plannable(str(config), gpu)
    the_plan = planning.plan_config(cfg).plan  # the one planning pipeline (gpus: auto reads NVML)
    runs = load_results(bench) if bench is not None else []
    advice = advise(cfg, the_plan, runs, _history(cfg, state_dir, since))
    if as_json:
        print_json(advice.to_dict())
        return
    _print_advice(advice, console)


def _print_advice(advice: Advice, out: Console) -> None:
    """The decision in bold, then each reason that applied (with its symbol) and each note."""
    out.print(f"[bold]{safe(advice.headline())}[/]", highlight=False)
    for reason in advice.reasons:
        out.print(f"  {reason.symbol()} {safe(reason.text)}", highlight=False)
    for note in advice.notes:
        out.print(f"  · {safe(note)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``capacity`` and ``advise``."""
    app.command("capacity")(capacity_command)
    app.command("advise")(advise_command)
