"""Issue 14's run (``scripts/gpu_tune.sh``): a mixed load on a running colo, and the tune targets judged.

    python scripts/tune_run.py load CONFIG --duration 180 --clients 3 --out load.json
    python scripts/tune_run.py report CONFIG --state-dir SD --tune tune.json --since WALL --load load.json

``load``: every agent of CONFIG at once through HTTP with ``colo bench agents``' load generator
(:func:`colo.bench.loads.agents.drive_spread`), each client cycling through, per model, a typical request
(8 × 128, clamped to the model's worst case; generators 16 new tokens) and the model's worst case
(``batch_size`` × ``max_seq_len``, all ``new_tokens``) — so every model's worst case runs many times.

``report``: from colo's own usage history (state dir, windows that ended after ``--since``) each agent's peak
(NVML, its process tree) over its limit (target ≥ 0.85), its out-of-memory signs (history) and 507 answers
(``load``; target 0); the total allocation before and after the tune (``colo tune --json`` from before the
apply). Prints ``GPU-RESULT tune ...`` lines and a table; exit 0 when every target passed, 1 otherwise
(``--dry-run``: the figures are printed, the targets not judged: no GPU memory is read on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PEAK_TARGET = 0.85


def load(config_path: Path, duration: float, clients: int, out: Path, processes: int) -> int:
    from dataclasses import replace

    from colo.bench.agents_run import config_targets, request_shapes
    from colo.bench.loads.agents import drive_spread, wait_healthy
    from colo.files import write_atomic
    from colo.spec import load_config

    cfg = load_config(config_path)
    typical = config_targets(cfg, batch=8, seq_len=128, new_tokens=16)
    targets = []
    for t in typical:
        worst = request_shapes(cfg, t.name, batch=1 << 20, seq_len=1 << 20, new_tokens=1 << 20)
        mixed = tuple(s for pair in zip(t.shapes, worst, strict=True) for s in pair)
        targets.append(replace(t, shapes=mixed))
    missing = wait_healthy(targets, 300.0)
    if missing:
        print(f"not healthy: {', '.join(missing)}", file=sys.stderr)
        return 1
    done = drive_spread(targets, clients, duration, warmup_secs=2.0, processes=processes)
    body = {
        "duration_secs": duration,
        "clients": clients,
        "shapes": {t.name: [s.to_dict() for s in t.shapes] for t in targets},
        "agents": {
            ld.name: {"requests": ld.requests, "errors": dict(ld.errors), "last_error": ld.last_error}
            for ld in done.loads
        },
    }
    write_atomic(out, json.dumps(body, indent=2) + "\n")
    for ld in done.loads:
        print(f"{ld.name}: {ld.requests} requests, errors {dict(ld.errors) or 'none'}")
    return 0


def report(config_path: Path, state_dir: Path, tune_json: Path, since: float, load_json: Path, dry_run: bool) -> int:
    from colo.spec import load_config
    from colo.supervise.store import Store

    cfg = load_config(config_path)
    before: dict[str, Any] = json.loads(tune_json.read_text())
    loaded: dict[str, Any] = json.loads(load_json.read_text()) if load_json.exists() else {"agents": {}}
    store = Store(state_dir / "colo.db")
    rows = store.usage(since=since)
    store.close()
    proposals = {a["agent"]: a for a in before.get("agents", [])}
    ok = True
    table = ["| agent | limit before GiB | limit after GiB | peak GiB | peak / limit | OOM | 507 |", "|---|---|---|---|---|---|---|"]
    for name in sorted(cfg.agents):
        mine = [r for r in rows if r.agent == name and r.polls > 0]
        peak = max((r.peak_bytes for r in mine), default=0)
        limit = mine[-1].limit_bytes if mine else 0
        oom = sum(r.oom for r in rows if r.agent == name)
        errors = loaded["agents"].get(name, {}).get("errors", {})
        e507 = int(errors.get("507", 0))
        ratio = peak / limit if limit else 0.0
        prop = proposals.get(name, {})
        fine = ratio >= PEAK_TARGET and oom == 0 and e507 == 0
        ok = ok and fine
        print(
            f"GPU-RESULT tune agent={name} limit_before_mib={prop.get('current_bytes', 0) // 2**20} "
            f"limit_after_mib={limit // 2**20} peak_mib={peak // 2**20} peak_over_limit={ratio:.3f} "
            f"oom={oom} http_507={e507} windows={len(mine)} outcome={'pass' if fine else 'fail'}"
        )
        table.append(
            f"| {name} | {prop.get('current_bytes', 0) / 2**30:.2f} | {limit / 2**30:.2f} | {peak / 2**30:.2f} | "
            f"{ratio:.2f} | {oom} | {e507} |"
        )
    total_before, total_after = before.get("total_before_bytes", 0), before.get("total_after_bytes", 0)
    print(
        f"GPU-RESULT tune total_before_gib={total_before / 2**30:.2f} total_after_gib={total_after / 2**30:.2f} "
        f"targets={'n/a (dry run)' if dry_run else 'pass' if ok else 'fail'}"
    )
    print("\n".join(table))
    return 0 if ok or dry_run else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/tune_run.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("config", type=Path)
    lp.add_argument("--duration", type=float, default=180.0)
    lp.add_argument("--clients", type=int, default=3)
    lp.add_argument("--processes", type=int, default=2)
    lp.add_argument("--out", type=Path, required=True)
    rp = sub.add_parser("report")
    rp.add_argument("config", type=Path)
    rp.add_argument("--state-dir", type=Path, required=True)
    rp.add_argument("--tune", type=Path, required=True)
    rp.add_argument("--since", type=float, required=True)
    rp.add_argument("--load", type=Path, required=True)
    rp.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "load":
        return load(args.config, args.duration, args.clients, args.out, args.processes)
    return report(args.config, args.state_dir, args.tune, args.since, args.load, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
