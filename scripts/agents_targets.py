"""Issue 13's targets, judged from ``colo bench agents`` results (``scripts/gpu_agents_bench.sh`` runs it).

    python scripts/agents_targets.py NEW/agents.json [--old OLD/agents.json] [--config colo.yaml]
                                     [--clients 3] [--summary summary.json]
                                     [--inprocess FORWARDS/bench.json] [--lone-agents analyst,balancer]

Prints one ``GPU-RESULT`` line per target and the table (new build's points, then the old build's):

- no error other than 503-with-Retry-After at every point of the new build;
- every agent's NVML peak ≤ its limit at every point (unknown counts as not shown);
- aggregate seq/s at ``--clients`` under MPS ≥ 2× the old build's (same bench, same device, one run);
- MPS ≥ 1.5× time-slicing at ``--clients``;
- a lone request no slower than the old build's by more than the agent's batching wait (``batch_wait_ms``);
- p99 at every point, and the load generator's CPU (its busiest process below 0.8 of a core: not the bottleneck);
- with ``--inprocess`` (``colo bench forwards CONFIG --mode mps`` on the same device, same run), issue 22's:
  the agents through HTTP at 16 clients per agent (MPS) >= 60 % of the in-process MPS aggregate, and a lone
  request to each of ``--lone-agents`` (the newsroom's bert-tiny agents) p50 <= 1.5 ms.

Exit status 0 when every target shown passed, 1 otherwise, 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo.bench import agents_report as rep
from colo.bench import format as fmt
from colo.bench.modes import Mode
from colo.bench.report import load_json
from colo.bench.results import BenchResult

DEFAULT_BATCH_WAIT_MS = 2.0
LOADGEN_BUSY_CORES = 0.8
#: Issue 22: HTTP at HTTP_CLIENTS clients per agent against the in-process harness, and a lone request's p50.
HTTP_CLIENTS = 16
HTTP_SHARE = 0.6
LONE_P50_MS = 1.5


@dataclass(frozen=True)
class Target:
    name: str
    passed: bool | None  # None: could not be judged (missing data)
    detail: str

    def line(self) -> str:
        verdict = "n/a" if self.passed is None else "PASS" if self.passed else "FAIL"
        return f"GPU-RESULT {self.name}: {verdict} — {self.detail}"


def _agg(result: BenchResult | None, mode: Mode, clients: int) -> float | None:
    p = result.point(mode, clients) if result else None
    return p.aggregate_per_sec if p else None


def _speedup(name: str, seq_per_sec: float | None, base_seq_per_sec: float | None, factor: float) -> Target:
    """``seq_per_sec >= factor x base_seq_per_sec``; not judged when either is missing (or the base is 0)."""
    ratio = seq_per_sec / base_seq_per_sec if seq_per_sec is not None and base_seq_per_sec else None
    return Target(
        name,
        None if ratio is None else ratio >= factor,
        f"{_n(seq_per_sec)} vs {_n(base_seq_per_sec)} seq/s = {fmt.ratio(ratio)}",
    )


def judge(
    new: BenchResult, old: BenchResult | None, *, clients: int = 3, batch_wait_ms: dict[str, float] | None = None
) -> list[Target]:
    """Every target, in the issue's order."""
    out: list[Target] = []
    errs = [(p.mode, p.concurrency, rep.hard_errors(p), rep.retry_after(p)) for p in new.points]
    bad = [e for e in errs if e[2]]
    out.append(
        Target(
            "errors other than 503 Retry-After",
            not bad and bool(errs),
            "; ".join(f"{m} {n} clients: {h} (503 RA {ra})" for m, n, h, ra in errs) or "no points",
        )
    )
    limits = [(p.mode, p.concurrency, rep.within_limits(p)) for p in new.points]
    over = [
        f"{p.mode} {p.concurrency}: {i.label} {rep.memory_cell(i)}"
        for p in new.points
        for i in p.instances
        if i.info.get("within_limit") is False
    ]
    unknown = [f"{m} {n}" for m, n, ok in limits if ok is None]
    out.append(
        Target(
            "NVML peak <= limit",
            None if unknown or not limits else not over,
            "; ".join(over) or (f"unknown at {', '.join(unknown)}" if unknown else "every agent, every point"),
        )
    )
    new_mps = _agg(new, Mode.MPS, clients)
    out.append(_speedup(f"new >= 2x old at {clients} clients (MPS)", new_mps, _agg(old, Mode.MPS, clients), 2.0))
    out.append(
        _speedup(f"MPS >= 1.5x time-slicing at {clients} clients", new_mps, _agg(new, Mode.TIMESLICE, clients), 1.5)
    )
    out.append(_lone(new, old, batch_wait_ms or {}))
    p99 = [f"{p.mode} {p.concurrency}: {fmt.ms(p.latency.p99_secs)} ms" for p in new.points]
    out.append(
        Target("p99 reported", bool(p99) and all(math.isfinite(p.latency.p99_secs) for p in new.points), "; ".join(p99))
    )
    busiest = [
        (p.mode, p.concurrency, p.load.get("max_process_cores"), p.load.get("cpu_cores_used"))
        for p in [*new.points, *(old.points if old else ())]
    ]
    known = [b for b in busiest if b[2] is not None]
    out.append(
        Target(
            "load generator not the bottleneck",
            None if not known else all(float(b[2] or 0) < LOADGEN_BUSY_CORES for b in known),
            "; ".join(f"{m} {n}: {c or 0:.2f} cores, busiest process {b or 0:.2f}" for m, n, b, c in busiest),
        )
    )
    return out


def _lone(new: BenchResult, old: BenchResult | None, waits: dict[str, float]) -> Target:
    new_lone = (new.settings.get("lone") or {}).get(Mode.MPS) or {}
    old_lone = ((old.settings.get("lone") or {}).get(Mode.MPS) or {}) if old else {}
    deltas = []
    for agent, row in sorted(new_lone.items()):
        before = old_lone.get(agent, {}).get("p50_secs")
        now = row.get("p50_secs")
        if before is None or now is None:
            continue
        wait = waits.get(agent, DEFAULT_BATCH_WAIT_MS)
        deltas.append((agent, 1000 * (now - before), wait))
    if not deltas:
        return Target("lone request slower by <= batch wait", None, "no lone-request latencies of both builds")
    worst = max(deltas, key=lambda d: d[1] - d[2])
    return Target(
        "lone request slower by <= batch wait",
        all(d <= w for _, d, w in deltas),
        f"p50 new − old per agent: {', '.join(f'{a} {d:+.2f} ms' for a, d, _ in deltas)}; "
        f"worst {worst[0]} {worst[1]:+.2f} ms against its wait {worst[2]:g} ms",
    )


def judge_http(new: BenchResult, inprocess: BenchResult, lone_agents: Sequence[str]) -> list[Target]:
    """Issue 22's targets: HTTP (MPS, HTTP_CLIENTS per agent) against the in-process MPS aggregate (its largest
    point: every agent at once), and each of ``lone_agents``'s lone-request p50 under MPS."""
    http = _agg(new, Mode.MPS, HTTP_CLIENTS)
    bare = [p for p in inprocess.points if p.mode == Mode.MPS]
    base = max(bare, key=lambda p: p.concurrency).aggregate_per_sec if bare else None
    share = http / base if http is not None and base else None
    out = [
        Target(
            f"HTTP at {HTTP_CLIENTS} clients >= {HTTP_SHARE:.0%} of in-process (MPS)",
            None if share is None else share >= HTTP_SHARE,
            f"{_n(http)} vs {_n(base)} seq/s = {'–' if share is None else f'{share:.1%}'}",
        )
    ]
    lone = (new.settings.get("lone") or {}).get(Mode.MPS) or {}
    p50s = {a: lone.get(a, {}).get("p50_secs") for a in lone_agents}
    known = {a: 1000 * float(v) for a, v in p50s.items() if v is not None}
    out.append(
        Target(
            f"lone request p50 <= {LONE_P50_MS:g} ms ({', '.join(lone_agents)})",
            None if len(known) < len(p50s) or not p50s else all(v <= LONE_P50_MS for v in known.values()),
            ", ".join(f"{a} {v:.2f} ms" for a, v in known.items()) or "no lone-request latencies",
        )
    )
    return out


def table(new: BenchResult, old: BenchResult | None) -> list[str]:
    """The points of both builds in one Markdown table (the old build's labelled)."""
    rows = [["new", *r] for r in rep.point_rows(new)] + ([["old", *r] for r in rep.point_rows(old)] if old else [])
    header = ["build", *rep.POINT_HEADER]
    return fmt.markdown_table(header, rows)


def _n(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _waits(config: Path | None) -> dict[str, float]:
    if config is None:
        return {}
    from colo.spec.load import load_config

    cfg = load_config(config)
    return {name: float(a.batch_wait_ms) for name, a in cfg.agents.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("new", type=Path, help="agents.json of the build under test")
    parser.add_argument("--old", type=Path, help="agents.json of the old build (attached, same bench)")
    parser.add_argument("--config", type=Path, help="colo.yaml: each agent's batch_wait_ms")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--summary", type=Path, help="write the targets as JSON here")
    parser.add_argument("--inprocess", type=Path, help="bench.json of `colo bench forwards CONFIG --mode mps`")
    parser.add_argument("--lone-agents", default="analyst,balancer", help="agents whose lone p50 is judged")
    args = parser.parse_args(argv)
    try:
        new = load_json(args.new.read_text())[0]
        old = load_json(args.old.read_text())[0] if args.old and args.old.exists() else None
        inprocess = load_json(args.inprocess.read_text())[0] if args.inprocess else None
        waits = _waits(args.config)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"agents_targets: cannot read the results: {exc}", file=sys.stderr)
        return 2
    targets = judge(new, old, clients=args.clients, batch_wait_ms=waits)
    if inprocess is not None:
        targets += judge_http(new, inprocess, [a for a in args.lone_agents.split(",") if a])
    for t in targets:
        print(t.line())
    print()
    print("\n".join(table(new, old)))
    if args.summary:
        doc: dict[str, Any] = {"targets": [{"name": t.name, "passed": t.passed, "detail": t.detail} for t in targets]}
        args.summary.write_text(json.dumps(doc, indent=1))
    return 0 if all(t.passed is not False for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
