"""``colo tune CONFIG [--since DURATION] [--json] [--apply]``: limits from what the agents really used.

A view over :func:`colo.supervise.tune.formula.propose` (the formula is there) fed by
:func:`colo.supervise.tune.inputs.gather` (plan, model database, tuned limits, usage history of the state
dir). ``--apply`` hands the accepted proposals to the running orchestrator through its HTTP API (``POST
/tune``): it records them in ``<state_dir>/tuned_limits.json`` — it is that file's one writer — and applies its
configuration again, the same rolling apply as ``colo apply`` (only agents whose limit changed restart, one
at a time). Without a running orchestrator they are written here, under the file's lock, for the next
``colo up``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from colo import units
from colo.cli.common import STATE_DIR_HELP, console, print_json, safe
from colo.errors import UsageError


def parse_since(text: str | None) -> float | None:
    """``--since``: a duration (``90s``, ``30m``, ``3h``, ``7d``); None = the whole history. Raises UsageError."""
    if text is None:
        return None
    try:
        secs = units.parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--since {text!r}: {exc}") from exc
    if secs <= 0:
        raise UsageError(f"--since {text!r}: give a period longer than zero, e.g. '30m' or '7d'")
    return secs


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / units.GIB:.2f}"


def tune_command(
    config: Path = typer.Argument(..., metavar="CONFIG", help="The colo.yaml the agents run with."),
    since: str | None = typer.Option(None, "--since", help="Only history newer than this: '30m', '3h', '7d'."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    apply: bool = typer.Option(
        False, "--apply", help="Record the proposals as tuned limits and roll them out on the running colo."
    ),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """Propose per-agent limits from the usage history: max(observed peak, profiled worst case) + a margin
    from the peaks' spread and the allocator's granularity, never below the worst case's need; per GPU (where
    colo runs the agents), the allocation now and as proposed. Says when the history is too short to trust.
    --apply rolls them out (only changed agents restart, one at a time); an agent that runs out of memory under
    its new limit gets its old one back automatically."""
    from colo.spec import load_config
    from colo.supervise.statedir import resolve_state_dir, running_orchestrator
    from colo.supervise.tune.formula import propose
    from colo.supervise.tune.inputs import TunedChange, gather, write_tuned

    since_secs = parse_since(since)  # a bad --since is a usage error before anything is read
    cfg = load_config(config)
    sd = resolve_state_dir(cfg, state_dir)
    client = None
    if apply and running_orchestrator(sd) is not None:
        from colo.api.client import orchestrator_client

        client = orchestrator_client(sd)  # running without an API: a clear message, nothing written
    now = time.time()
    inputs = gather(cfg, sd, since_wall=now - since_secs if since_secs else 0.0)
    report = propose(inputs.facts, inputs.samples, inputs.settings)
    out: dict[str, Any] = {"state_dir": str(sd), "since_secs": since_secs, **report.to_dict()}
    changes = TunedChange.accepted(report.proposals)
    if client is not None:
        with client:  # the orchestrator records them (the file's one writer) and rolls them out
            answer = client.tune([c.to_dict() for c in changes]) if changes else {"tuned": [], "applied": None}
        out["tuned"] = answer.get("tuned") or []
        if answer.get("applied") is not None:
            out["applied"] = answer["applied"]
    elif apply:  # no orchestrator: written under the file's lock, for the next `colo up`
        out["tuned"] = sorted(write_tuned(cfg, sd, changes, now=now))
    if as_json:
        print_json(out)
        return
    _render(report, out, since_secs)


def _render(report: Any, out: dict[str, Any], since_secs: float | None) -> None:
    period = f"the last {units.format_duration(since_secs)}" if since_secs else "the whole history"
    table = Table(title=f"colo tune ({period})", title_justify="left", header_style="bold")
    for col in ("agent", "gpu", "limit GiB", "peak GiB", "profiled GiB", "windows", "proposed GiB", "freed GiB"):
        table.add_column(col, justify="left" if col in ("agent", "gpu") else "right")
    table.add_column("why", justify="left")
    for p in report.proposals:
        table.add_row(
            safe(p.agent), safe(p.gpu), _gib(p.current_bytes), _gib(p.observed_peak_bytes), _gib(p.profiled_bytes),
            f"{p.windows} ({units.format_duration(p.span_secs)})", _gib(p.proposed_bytes),
            _gib(p.freed_bytes) if p.trusted else "—", safe(p.reason),
        )
    console.print(table)
    before, after = report.total_before_bytes, report.total_after_bytes
    console.print(
        f"total allocation: {_gib(before)} GiB now → {_gib(after)} GiB proposed "
        f"({units.format_size(abs(before - after))} {'freed' if before >= after else 'more'})",
        highlight=False,
    )
    for g in report.gpus:  # per GPU: its allocation now and as proposed, and what the memory freed buys
        console.print(safe(f"{g.allocation_text()}; {g.text()}"), highlight=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {safe(note)}", highlight=False, soft_wrap=True)
    if "tuned" in out:
        tuned = out["tuned"]
        if not tuned:
            console.print("nothing to apply: no trusted proposal changes a limit", highlight=False)
        elif "applied" not in out:
            console.print(
                f"tuned limits written to {safe(out['state_dir'])}/tuned_limits.json for {', '.join(tuned)}; "
                "colo is not running: `colo up` plans with them",
                highlight=False, soft_wrap=True,
            )
        else:
            console.print(
                f"tuned limits written to {safe(out['state_dir'])}/tuned_limits.json for {', '.join(tuned)}; "
                f"restarting one at a time: {', '.join(out['applied'].get('restarted') or []) or '-'}",
                highlight=False, soft_wrap=True,
            )


def register(app: typer.Typer) -> None:
    """Add ``tune``."""
    app.command("tune")(tune_command)
