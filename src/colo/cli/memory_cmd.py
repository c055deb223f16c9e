"""``colo profile``, ``colo estimate``, ``colo db show|export``: knowing what each model really needs.

Heavy imports (torch, transformers, pynvml) happen inside the commands.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from colo import units
from colo.cli.common import OptionGroup, console, err_console, print_json, safe, with_option_groups
from colo.errors import ColoError, UsageError
from colo.memory.db import AgentEntry, ModelDB, ModelEntry
from colo.memory.worst_case import WorstCase
from colo.spec.config import ColoConfig, GpuInventory, ModelSpec

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _load_config(path: str) -> ColoConfig:
    """A colo.yaml, or a seed ``model_config.json`` (its models and agent mappings)."""
    from colo.spec.load import load_config
    from colo.spec.seed_format import config_from_model_config, load_document, parse_model_config

    if path.endswith(".json"):
        loaded, kind = load_document(path)
        if kind == "model_config":
            mc = parse_model_config(loaded)
            return config_from_model_config(mc, [GpuInventory(memory_bytes=80 * units.GIB)], path)
    return load_config(path)


@dataclass(frozen=True)
class Targets:
    """What ``colo estimate`` and ``colo profile`` measure: a colo.yaml, or model ids in the command line's shape."""

    targets: list[str] | None
    dtype: str
    batch: int | None
    seq: int | None
    new_tokens: int | None


TARGET_OPTIONS: Any = OptionGroup(
    Targets,
    (
        ("targets", list[str], typer.Argument(None, metavar="[CONFIG | MODEL ...]", help="colo.yaml or model ids.")),
        ("dtype", str, typer.Option("float32", "--dtype", help="Model ids: float32 | float16 | bfloat16.")),
        ("batch", int | None, typer.Option(None, "--batch", min=1, help="Model ids: batch size (default 1).")),
        ("seq", int | None, typer.Option(None, "--seq", min=1, help="Model ids: tokens in (prompt for generators).")),
        ("new_tokens", int | None, typer.Option(None, "--new-tokens", min=0, help="Model ids: generated tokens.")),
    ),
)
DB_OPT = typer.Option(None, "--db", help="Model database (default: the state dir's).")


def _targets(
    what: Targets, *, random_weights: bool | None
) -> tuple[ColoConfig | None, dict[str, WorstCase], dict[str, tuple[WorstCase, ...]]]:
    """A config file (its models and agents) or model ids (the command line's shape), as requests."""
    from colo.memory.worst_case import agent_requests, config_requests, model_request

    targets, dtype, batch, seq, new_tokens = what.targets or [], what.dtype, what.batch, what.seq, what.new_tokens

    if not targets:
        raise UsageError("name a colo.yaml or one or more model ids, e.g. `colo estimate roberta-base`")
    first = targets[0]
    if first.endswith(CONFIG_SUFFIXES) and Path(first).is_file():
        if len(targets) > 1:
            raise UsageError("give either one configuration file or model ids, not both")
        config = _load_config(first)
        models = config_requests(config, random_weights=random_weights)
        if batch or seq or new_tokens is not None:
            raise UsageError("--batch/--seq/--new-tokens apply to model ids; a configuration declares its own")
        agents = {a: agent_requests(config, a, random_weights=random_weights) for a in config.agents}
        return config, models, agents
    models = {}
    for mid in targets:
        try:
            spec = ModelSpec(
                dtype=dtype,
                batch_size=batch or 1,
                max_seq_len=seq or 512,
                new_tokens=64 if new_tokens is None else new_tokens,
            )
        except ValueError as exc:
            raise UsageError(f"{mid}: {exc}") from exc
        models[mid] = model_request(mid, spec, random_weights=random_weights)
    return None, models, {}


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / units.MIB:,.0f}"


# -- colo estimate --------------------------------------------------------------------------------------


@with_option_groups
def estimate_command(
    what: Targets = TARGET_OPTIONS,
    gpu_name: str | None = typer.Option(None, "--gpu-name", help="Use the DB's measured overhead for this GPU."),
    db_path: str | None = DB_OPT,
    save: bool = typer.Option(False, "--save", help="Record the estimates in the model database."),
    list_catalog: bool = typer.Option(False, "--list", help="List the architecture catalog and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate each model's worst-case GPU memory without a GPU (always labelled "estimate")."""
    from colo.memory import catalog

    if list_catalog:
        rows = [
            {"model": m, "task": catalog.entry(m).task, "family": catalog.entry(m).family}
            for m in catalog.known_models()
        ]
        if as_json:
            print_json(rows)
        else:
            for r in rows:
                console.print(f"{safe(r['model']):<52} {r['task']:<10} {safe(r['family'])}", highlight=False)
        return

    from colo.memory.db import Provenance
    from colo.memory.estimate import DEFAULT_OVERHEAD_BYTES, estimate
    from colo.profiling.profiler import utc_now

    config, models, _agents = _targets(what, random_weights=None)
    db = ModelDB.open(db_path) if db_path else ModelDB.open_default(config)
    overhead = db.overhead_for(gpu_name) if gpu_name else db.overhead_for(None)
    results = []
    for req in models.values():
        est = estimate(
            req,
            overhead_bytes=overhead[0] if overhead else DEFAULT_OVERHEAD_BYTES,
            overhead_source=overhead[1] if overhead else "default 680 MiB (H100, CUDA 13; docs/memory.md)",
        )
        results.append(est)
        if save:
            db.put(
                ModelEntry(
                    model=req.model,
                    dtype=req.dtype,
                    batch_size=req.batch_size,
                    seq_len=req.seq_len,
                    new_tokens=req.new_tokens,
                    kind="estimated",
                    nvml_peak_bytes=est.nvml_peak_bytes,
                    weights_bytes=est.weights_bytes,
                    reserved_peak_bytes=est.reserved_bytes,
                    overhead_bytes=est.overhead_bytes,
                    provenance=Provenance(gpu=gpu_name or "", date=utc_now()),
                )
            )
    if save:
        db.save()
    if as_json:
        print_json([e.to_dict() for e in results])
        return
    table = Table(title="estimate (no GPU used)", title_justify="left")
    for col in ("model", "task", "shape", "params", "weights MiB", "activ. MiB", "KV MiB", "overhead MiB", "NVML MiB"):
        table.add_column(col, justify="left" if col in ("model", "task", "shape") else "right")
    for e in results:
        shape = f"{e.dtype} {e.batch_size}×{e.seq_len}" + (f"+{e.new_tokens}" if e.new_tokens else "")
        table.add_row(
            safe(e.model_id),
            e.task,
            shape,
            f"{e.params / 1e6:,.1f}M",
            _mib(e.weights_bytes),
            _mib(e.activation_bytes),
            _mib(e.kv_cache_bytes),
            _mib(e.overhead_bytes),
            _mib(e.nvml_peak_bytes),
        )
    console.print(table)
    src = results[0].overhead_source if results else ""
    console.print(
        f"label: estimate · overhead: {safe(src)}" + (f" · saved to {safe(db.path)}" if save else ""), highlight=False
    )


# -- colo profile ---------------------------------------------------------------------------------------


def _mps_env(gpu_uuid: str, state: str | None, pipe_dir: str | None) -> dict[str, str]:
    """MPS client variables when a daemon runs for this GPU (explicit pipe dir, inherited, or colo's own)."""
    from colo.gpu.mps.env import daemon_location, pipe_dir_of

    if pipe_dir:
        return daemon_location(pipe_dir)
    if pipe_dir_of(os.environ):
        return {}
    from colo.files import state_dir
    from colo.gpu.mps.root import MpsRoot

    paths = MpsRoot.under_state_dir(state_dir(state)).for_gpu(gpu_uuid)
    if (paths.pipe_dir / "control").exists():
        return daemon_location(paths)
    return {}


@with_option_groups
def profile_command(
    what: Targets = TARGET_OPTIONS,
    gpu: int = typer.Option(0, "--gpu", min=0, help="NVML index of the GPU to profile on."),
    device: str = typer.Option("cuda", "--device", hidden=True, help="Torch device of the child (tests: cpu)."),
    agents: bool = typer.Option(True, "--agents/--no-agents", help="Also run each agent's model set together."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Ignore local weights (shapes only)."),
    repeats: int = typer.Option(1, "--repeats", min=1, max=100, help="Worst-case runs per model."),
    mps_pipe_dir: str | None = typer.Option(None, "--mps-pipe-dir", help="Run children as clients of this MPS daemon."),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="Seconds per child before it is killed."),
    db_path: str | None = DB_OPT,
    export: Path | None = typer.Option(None, "--export", help="Also write a seed-format model_config.json here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Measure each model (and each agent's model set) in a fresh child process on a GPU; record the results."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from colo.gpu.nvml import NvmlBackend
    from colo.profiling.command import (
        CommandRunOptions,
        command_agents,
        models_only_in_command_agents,
        profile_command_agent,
    )
    from colo.profiling.profiler import Profiler, jobs_for

    config, models, agent_sets = _targets(what, random_weights=True if random_weights else None)
    backend = NvmlBackend()
    snaps = backend.gpus()
    match = [g for g in snaps if g.index == gpu]
    if not match:
        raise UsageError(f"--gpu {gpu}: no such GPU (NVML lists {len(snaps)})", hint="see `colo gpu info`")
    env = {"CUDA_VISIBLE_DEVICES": match[0].uuid}
    env.update(_mps_env(match[0].uuid, config.state_dir if config else None, mps_pipe_dir))
    db = ModelDB.open(db_path) if db_path else ModelDB.open_default(config)
    profiler = Profiler(db, backend, device=device, env=env, timeout_secs=timeout)
    commands = command_agents(config) if config is not None else {}
    if commands:  # measured as they run (their own command under load), not in colo's child
        assert config is not None
        skip = models_only_in_command_agents(config)
        models = {m: r for m, r in models.items() if m not in skip}
        agent_sets = {a: r for a, r in agent_sets.items() if a not in commands}
    jobs = jobs_for(models, agent_sets if agents else None)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=as_json,
    ) as progress:
        task = progress.add_task("profiling", total=len(jobs) + len(commands))
        for job in jobs:
            progress.update(task, description=safe(f"profiling {job.label}"))
            results.append(profiler.run_job(job, repeats=repeats))
            progress.advance(task)
            db.save()  # keep what was measured even if a later child is interrupted
        for name, agent in commands.items():
            progress.update(task, description=safe(f"profiling agent {name} (its command, under its profile load)"))
            from colo.files import state_dir

            log_dir = state_dir(config.state_dir if config else None) / "logs"
            results.append(profile_command_agent(agent, db, backend, log_dir=log_dir, options=CommandRunOptions(env=env)))
            progress.advance(task)
            db.save()
    rows = [_result_row(r) for r in results]
    if export is not None and config is not None:
        from colo.files import write_atomic
        from colo.memory.seed_export import model_config_document

        write_atomic(export, json.dumps(model_config_document(config, db, match[0].name), indent=2) + "\n")
    if as_json:
        print_json({"gpu": match[0].name, "db": str(db.path), "results": rows})
    else:
        _print_profile(rows, match[0].name, str(db.path), env)
    failed = [r for r in results if not r.ok]
    if failed:
        raise ColoError(
            f"{len(failed)} of {len(results)} profiling runs failed: "
            + "; ".join(f"{r.job.label}: {r.error}" for r in failed)
        )


def _result_row(r: Any) -> dict[str, Any]:
    out = r.outcome
    res = out.result if out else None
    entry = r.agent_entry
    models = [m.model for m in r.job.models]
    job: dict[str, Any] = {"job": r.job.label, "agent": r.job.agent, "models": models, "ok": r.ok, "error": r.error}
    if out is None and entry is not None and entry.command:  # a command agent: its process tree's peak
        return job | {
            "weights": "its own command",
            "weights_bytes": None,
            "context_bytes": None,
            "allocated_peak_bytes": None,
            "reserved_peak_bytes": None,
            "nvml_peak_bytes": entry.nvml_peak_bytes,
            "samples": entry.samples,
            "sample_hz": entry.sample_hz,
            "command": entry.command,
        }
    return job | {
        "weights": ", ".join(sorted({run.description for run in res.runs})) if res else "",
        "weights_bytes": res.weights_bytes if res else None,
        "context_bytes": out.context_bytes if out else None,
        "allocated_peak_bytes": res.allocated_peak_bytes if res else None,
        "reserved_peak_bytes": res.reserved_peak_bytes if res else None,
        "nvml_peak_bytes": out.nvml_peak_bytes if out else None,
        "samples": out.sampler.samples if out and out.sampler else 0,
        "sample_hz": round(out.sampler.rate_hz, 1) if out and out.sampler else 0.0,
    }


def _print_profile(rows: list[dict[str, Any]], gpu: str, db: str, env: dict[str, str]) -> None:
    table = Table(title=f"measured on {gpu}", title_justify="left")
    for col in (
        "job",
        "weights MiB",
        "context MiB",
        "alloc peak MiB",
        "reserved peak MiB",
        "NVML peak MiB",
        "samples/s",
        "weights from",
    ):
        table.add_column(col, justify="left" if col in ("job", "weights from") else "right")
    for r in rows:
        if not r["ok"]:
            table.add_row(safe(r["job"]), "[red]failed[/]", "", "", "", "", "", safe(r["error"][:60]))
            continue
        table.add_row(
            safe(r["job"]),
            _mib(r["weights_bytes"]),
            _mib(r["context_bytes"]),
            _mib(r["allocated_peak_bytes"]),
            _mib(r["reserved_peak_bytes"]),
            _mib(r["nvml_peak_bytes"]),
            f"{r['sample_hz']:.0f}",
            safe(r["weights"]),
        )
    console.print(table)
    from colo.gpu.mps.env import pipe_dir_of

    mps = " under MPS" if pipe_dir_of(env) or pipe_dir_of(os.environ) else ""
    console.print(f"recorded in {safe(db)}{mps}", highlight=False)


# -- colo db ---------------------------------------------------------------------------------------------


def db_show_command(
    db_path: str | None = DB_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the database as JSON."),
) -> None:
    """Show the model memory database: one row per model × dtype × shape × kind × GPU, and agent sets."""
    db = ModelDB.open(db_path) if db_path else ModelDB.open_default()
    if as_json:
        print_json(db.to_dict())
        return
    table = Table(title=safe(db.path), title_justify="left")
    for col in ("model", "shape", "kind", "weights MiB", "reserved MiB", "NVML peak MiB", "GPU", "date"):
        table.add_column(col, justify="right" if "MiB" in col else "left")
    rows: list[tuple[str, str, ModelEntry | AgentEntry]] = [
        (safe(e.model), f"{e.dtype} {e.batch_size}×{e.seq_len}" + (f"+{e.new_tokens}" if e.new_tokens else ""), e)
        for e in db.models()
    ]
    rows += [(f"agent {safe(a.agent)}", f"{len(a.models)} models", a) for a in db.agents()]
    for label, shape, e in rows:
        table.add_row(
            label,
            shape,
            e.kind,
            _mib(e.weights_bytes),
            _mib(e.reserved_peak_bytes),
            _mib(e.nvml_peak_bytes),
            safe(e.provenance.gpu),
            safe(e.provenance.date[:19]),
        )
    console.print(table)
    if not db.models() and not db.agents():
        console.print("empty: run `colo profile CONFIG` on a GPU or `colo estimate CONFIG --save`")


def db_export_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="colo.yaml (models, shapes and agents)."),
    db_path: str | None = DB_OPT,
    gpu_name: str | None = typer.Option(None, "--gpu-name", help="Prefer measurements from this GPU model."),
    out: Path | None = typer.Option(None, "--out", help="Write model_config.json here (atomically)."),
) -> None:
    """Export seed-format model_config.json: measured > estimated > declared memory per model."""
    from colo.files import write_atomic
    from colo.memory.seed_export import model_config_document

    config = _load_config(config_path)
    db = ModelDB.open(db_path) if db_path else ModelDB.open_default(config)
    doc = model_config_document(config, db, gpu_name)
    if out is not None:
        write_atomic(out, json.dumps(doc, indent=2) + "\n")
        err_console.print(f"wrote {safe(out)}", highlight=False)
    else:
        print_json(doc)


def register(app: typer.Typer) -> None:
    """Add profile, estimate and the db group to ``app``."""
    app.command("profile")(profile_command)
    app.command("estimate")(estimate_command)
    db = typer.Typer(help="The model memory database (measured and estimated usage).", no_args_is_help=True)
    db.command("show")(db_show_command)
    db.command("export")(db_export_command)
    app.add_typer(db, name="db")
