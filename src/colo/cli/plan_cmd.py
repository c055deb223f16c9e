"""``colo plan``, ``colo validate``, ``colo schema``: the first commands a newcomer runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from colo import units
from colo.cli.common import console, err_console, print_json, report_error, safe
from colo.cli.views.findings import field_finding_row, group_findings, print_findings
from colo.errors import ConfigError, UsageError
from colo.plan import GpuSlot, Plan, require_complete
from colo.plan.allocation_doc import allocation_document
from colo.plan.checks import Finding, check_allocation, check_plan
from colo.plan.types import LimitSource
from colo.spec.config import ColoConfig, GpuInventory, Policy
from colo.spec.load import config_from_loaded
from colo.spec.seed_format import (
    config_from_model_config,
    load_document,
    parse_allocation,
    parse_model_config,
)
from colo.supervise import planning

_GPU_OPT = re.compile(r"^(?:(?P<count>\d+)x)?(?P<mem>[0-9.]+\s*[A-Za-z]+)$")


def parse_gpu_option(values: list[str]) -> list[GpuInventory]:
    """``--gpu 24GiB``, ``--gpu 8x80GiB``, ``--gpu node-a:8x80GiB`` -> inventory rows."""
    rows = []
    for v in values:
        node = "local"
        text = v.strip()
        if ":" in text:
            node, text = text.split(":", 1)
        m = _GPU_OPT.match(text.replace(" ", ""))
        if not m:
            raise UsageError(f"--gpu {v!r}: write e.g. '24GiB', '8x80GiB' or 'node-a:8x80GiB'")
        try:
            mem = units.parse_size(m.group("mem"))
            rows.append(GpuInventory(node=node, memory_bytes=mem, count=int(m.group("count") or 1)))
        except ValueError as exc:
            raise UsageError(f"--gpu {v!r}: {exc}") from exc
    return rows


def load_plannable(path: str, gpu_opts: list[str]) -> ColoConfig:
    """A colo.yaml or a seed model_config.json as a ColoConfig (``--gpu`` overrides the inventory)."""
    loaded, kind = load_document(path)
    override = parse_gpu_option(gpu_opts) if gpu_opts else None
    if kind == "allocation":
        raise UsageError(
            f"{path} is an allocation file (mps_allocation_config.json); it is already a plan — "
            "use `colo validate` on it, or plan from a colo.yaml or model_config.json"
        )
    if kind == "model_config":
        mc = parse_model_config(loaded)
        gpus = override or [GpuInventory(name="GPU", memory_bytes=24 * units.GIB)]
        if not override:
            err_console.print("note: a model_config.json has no GPU inventory; planning for one 24 GiB GPU "
                              "(use --gpu to change)")
        return config_from_model_config(mc, gpus, path)
    config = config_from_loaded(loaded)
    if override:
        config = config.model_copy(update={"gpus": override})
    return config


def _gib(value_bytes: int) -> str:
    return f"{value_bytes / units.GIB:.2f}"


def render_plan(
    p: Plan, config: ColoConfig, *, config_path: str, show_declared: bool, state_dir: Path | None = None
) -> None:
    """The allocation table, its summary and the plan's findings, grouped by cause (a view: formats the plan,
    decides nothing); ``config_path`` is the file the findings' advice names."""
    table = Table(title="MPS allocation", title_justify="left", header_style="bold")
    for col, just in (("agent", "left"), ("gpu", "left"), ("models", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    if show_declared:
        table.add_column("declared GiB", justify="right")
    tuned = [a for a in p.agents if a.limit_source is LimitSource.TUNED]
    rolled = [a.name for a in p.agents if a.limit_source is LimitSource.ROLLED_BACK]
    for col in ("calculated GiB", "margin GiB", "limit GiB", "thread %", "client prio", "priority"):
        table.add_column(col, justify="right")
    table.add_column("limit held by", justify="left")
    if tuned or rolled:
        table.add_column("limit from", justify="left")
    for a in p.agents:
        models = "\n".join(
            safe(m.model) if m.source == "declared" else f"{safe(m.model)} [dim]({m.source})[/]" for m in a.models
        )
        row = [safe(a.name), safe(a.gpu.label) if a.gpu else "[red]—[/]", models]
        if show_declared:
            declared = [config.models[m.model].memory_bytes for m in a.models]
            row.append(_gib(sum(d for d in declared if d)) if all(declared) else "—")
        row += [
            _gib(a.requirement_bytes), _gib(a.margin_bytes), _gib(a.limit_bytes),
            str(a.active_thread_pct), str(a.client_priority), a.priority,
            a.enforcement or "—",
        ]
        if tuned or rolled:
            row.append(safe(a.limit_source.value))
        table.add_row(*row)
    console.print(table)
    s = p.summary
    console.print(
        f"[bold]{s.total_agents} agents[/]: calculated {_gib(s.calculated_bytes)} GiB + margin "
        f"{_gib(s.margin_bytes)} GiB = allocated {_gib(s.allocated_bytes)} GiB; efficiency "
        f"{s.efficiency_pct:.1f}% (calculated / allocated); GPU utilisation {s.utilization_pct:.1f}% of "
        f"{_gib(s.gpu_memory_bytes)} GiB"
    )
    if len(p.gpus) > 1:
        gt = Table(title="per GPU", title_justify="left", header_style="bold")
        for col in ("gpu", "agents", "allocated GiB", "free GiB", "utilisation %"):
            gt.add_column(col, justify="left" if col == "gpu" else "right")
        for g in p.gpus:
            gt.add_row(safe(g.gpu.label), str(len(g.agents)), _gib(g.allocated_bytes), _gib(g.free_bytes),
                       f"{g.utilization_pct:.1f}")
        console.print(gt)
    for line in p.mps_lines():
        console.print(f"[bold]MPS[/] {safe(line)}", highlight=False, soft_wrap=True)
    policy = [a.name for a in p.agents if a.limit_source is not LimitSource.TUNED]
    if tuned:
        console.print(
            f"limits from: the policy (requirement + margin) for {len(policy)} agent(s); `colo tune` "
            f"({safe(state_dir or 'the state dir')}/tuned_limits.json) for {len(tuned)}:",
            highlight=False, soft_wrap=True,
        )
        for a in tuned:
            console.print(f"  {safe(a.name)}: {safe(a.requirement_source)}", highlight=False, soft_wrap=True)
    if rolled:
        console.print(
            f"rolled back to the policy's limit (out of memory under a tuned limit): {safe(', '.join(rolled))}",
            highlight=False, soft_wrap=True,
        )
    for u in p.unplaced:
        console.print(f"[red]left out:[/] {safe(u.reason)}", highlight=False)
    groups = group_findings((f.severity, f.topic, f.agent, f.message) for f in p.findings)
    print_findings(console, groups, config_path=config_path)


def plan_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="colo.yaml or a seed model_config.json"),
    as_json: bool = typer.Option(False, "--json", help="Print the allocation document (seed format) as JSON."),
    out: Path | None = typer.Option(None, "--out", help="Write the allocation document here (atomically)."),
    gpu: list[str] = typer.Option([], "--gpu", help="Plan for these GPUs instead: '24GiB', '8x80GiB', 'node:8x80GiB'."),
    from_db: bool = typer.Option(False, "--from-db", help="Use measured (else estimated) memory from the model DB."),
    db: str | None = typer.Option(None, "--db", help="Model database file (default: the state dir's)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Exit 0 even if some agents fit nowhere."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Where `colo tune` keeps tuned limits (default: the config's state dir)."
    ),
) -> None:
    """Plan per-agent MPS limits and placement; print the table, or the allocation file with --json/--out."""
    from colo.files import write_atomic

    config = load_plannable(config_path, gpu)
    p = planning.plan_config(config, from_db=from_db, db=db, state_dir=state_dir).plan
    doc = allocation_document(p)
    if out is not None:
        write_atomic(out, json.dumps(doc, indent=2) + "\n")
    if as_json:
        print_json(doc)
    else:
        from colo.supervise.statedir import resolve_state_dir

        sd = resolve_state_dir(config, state_dir)
        render_plan(p, config, config_path=config_path, show_declared=from_db or config.policy.memory_source == "db", state_dir=sd)
        if out is not None:
            console.print(f"wrote {safe(out)}", highlight=False)
    if not allow_partial:
        require_complete(p)


def _findings_for(path: str) -> tuple[str, list[Finding], list[str]]:
    """The file's kind, its findings, and (a colo.yaml) which GPUs the plan runs MPS on and why."""
    loaded, kind = load_document(path)
    if kind == "allocation":
        return kind, check_allocation(parse_allocation(loaded), Policy().margin), []
    if kind == "model_config":
        parse_model_config(loaded)
        return kind, [], []
    config = config_from_loaded(loaded)
    from colo.spec.checks import check_file
    from colo.supervise.agent_setup import builtin_port

    file_findings = [Finding(f.severity, f.where, f.message)
                     for f in check_file(config, loaded, builtin_port=lambda name: builtin_port(config, name))]
    if config.gpus == "auto":
        p = planning.plan_slots(config, [GpuSlot("local", 0, "unbounded", units.MAX_SIZE_BYTES)]).plan
        findings = [f for f in check_plan(p) if f.severity == "warning"]
        findings.append(Finding("warning", "gpus", "gpus: auto — placement not checked (no inventory)"))
        mps = [f"{line} (gpus: auto: all agents on one GPU here; decided per GPU at run time)" for line in p.mps_lines()]
        return kind, file_findings + findings, mps
    p = planning.plan_config(config).plan
    return kind, file_findings + check_plan(p), p.mps_lines()


def validate_command(
    files: list[str] = typer.Argument(..., metavar="FILE...", help="colo.yaml, model_config.json or mps_allocation_config.json"),
    as_json: bool = typer.Option(False, "--json", help="Findings as JSON."),
) -> None:
    """Check files for schema errors and for numbers that do not add up or do not fit.

    Exit 0: clean. 1: findings (errors or warnings). 2: a file is unreadable or invalid.
    """
    results: list[dict[str, Any]] = []
    worst = 0
    for path in files:
        try:
            kind, findings, mps = _findings_for(path)
        except ConfigError as exc:
            results.append({"file": path, "valid": False, "error": str(exc), "findings": []})
            worst = 2
            if not as_json:
                report_error(exc)
            continue
        results.append({
            "file": path, "kind": kind, "valid": True,
            "findings": [{"severity": f.severity, "where": f.where, "message": f.message} for f in findings],
            **({"mps": mps} if mps else {}),
        })
        if findings:
            worst = max(worst, 1)
        if not as_json:
            if not findings:
                console.print(f"[green]ok[/] {safe(path)} ({kind})", highlight=False)
            groups = group_findings(field_finding_row(f.severity, f.where, f.message) for f in findings)
            print_findings(console, groups, config_path=path, prefix=f"{path}: ", subject_label=("at", "at"))
            for line in mps:
                console.print(f"[dim]mps:[/] {safe(path)}: {safe(line)}", highlight=False, soft_wrap=True)
    if as_json:
        print_json({"files": results, "exit_code": worst})
    raise typer.Exit(worst)


def schema_command() -> None:
    """Print the JSON Schema of colo.yaml (docs/colo.schema.json is this output)."""
    schema = ColoConfig.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "colo.yaml"
    print_json(schema)


def register(app: typer.Typer) -> None:
    """Add plan, validate and schema to ``app``."""
    app.command("plan")(plan_command)
    app.command("validate")(validate_command)
    app.command("schema")(schema_command)
