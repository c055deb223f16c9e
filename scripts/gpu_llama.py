#!/usr/bin/env python3
"""Helpers of ``scripts/gpu_llama.sh`` (the llama.cpp guide run): wait for agents, the MPS-server drill,
server memory, and the final summary. Every step prints ``GPU-RESULT`` lines and writes JSON.

    python3 scripts/gpu_llama.py wait CONFIG [--timeout 300]         all agents RUNNING and answering chat
    python3 scripts/gpu_llama.py memory CONFIG --setup NAME --out F  per-agent memory (colo status) -> F
    python3 scripts/gpu_llama.py drill CONFIG --out F [--timeout 240] SIGKILL the MPS server, time recovery
    python3 scripts/gpu_llama.py summary DIR                          DIR/*.json -> DIR/results.{json,md}

``--fake`` (wait/drill) is for the CPU dry run: the drill SIGKILLs one agent instead of the MPS server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from colo.cli.status_cmd import status_data
from colo.spec.load import load_config
from colo.supervise.statedir import resolve_state_dir


def _state(config: str) -> Path:
    return resolve_state_dir(load_config(config), None)


def _agents(config: str) -> list[dict[str, Any]]:
    return list(status_data(_state(config))["agents"])


def _ports(config: str) -> dict[str, int]:
    cfg = load_config(config)
    return {name: a.port for name, a in cfg.agents.items() if a.port is not None}


def chat_ok(port: int, timeout_secs: float = 30.0) -> bool:
    """One tiny /v1/chat/completions request answered 200 with usage."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_secs) as resp:
            return resp.status == 200 and "usage" in json.loads(resp.read())
    except (OSError, ValueError):
        return False


def wait_ready(
    config: str, timeout_secs: float, *, not_pids: dict[str, int] | None = None
) -> tuple[bool, float, dict[str, int]]:
    """Until every agent is RUNNING (with a pid not in ``not_pids``) and answers a chat request."""
    start = time.monotonic()
    ports = _ports(config)
    while True:
        agents = _agents(config)
        pids = {a["name"]: a["pid"] for a in agents}
        running = agents and all(a["state"] == "RUNNING" for a in agents)
        fresh = not not_pids or all(pids.get(n) != p for n, p in not_pids.items())
        # Always send the requests: an idle server whose MPS server died only notices at its next CUDA call.
        answers = [chat_ok(ports[a["name"]], 10.0) for a in agents if a["name"] in ports]
        if running and fresh and all(answers):
            return True, time.monotonic() - start, pids
        if time.monotonic() - start > timeout_secs:
            states = ", ".join(f"{a['name']}={a['state']}" for a in agents)
            print(f"not ready after {timeout_secs:g} s: {states}", flush=True)
            return False, time.monotonic() - start, pids
        time.sleep(0.5)


def cmd_wait(args: argparse.Namespace) -> int:
    ok, secs, pids = wait_ready(args.config, args.timeout)
    print(f"GPU-RESULT step=up config={Path(args.config).name} ok={ok} seconds={secs:.1f} pids={pids}", flush=True)
    return 0 if ok else 1


def cmd_memory(args: argparse.Namespace) -> int:
    agents = _agents(args.config)
    rows = [
        {
            "agent": a["name"],
            "pid": a["pid"],
            "state": a["state"],
            "memory_used_bytes": a.get("memory_used_bytes"),
            "memory_peak_bytes": a.get("memory_peak_bytes"),
            "limit_bytes": a.get("limit_bytes"),
            "requirement_bytes": a.get("requirement_bytes"),
        }
        for a in agents
    ]
    for r in rows:
        used = r["memory_used_bytes"]
        print(
            f"GPU-RESULT step=memory setup={args.setup} agent={r['agent']} used_mib="
            f"{used / 2**20 if used else 0:.0f} limit_mib={(r['limit_bytes'] or 0) / 2**20:.0f}",
            flush=True,
        )
    Path(args.out).write_text(json.dumps({"setup": args.setup, "agents": rows}, indent=2))
    return 0


def _mps_server_pids(config: str) -> list[int]:
    from colo.gpu.mps.daemon import MpsDaemon
    from colo.gpu.mps.root import MpsRoot

    root = MpsRoot.under_state_dir(_state(config))
    uuids = {a["gpu_uuid"] for a in _agents(config) if a.get("gpu_uuid")}
    out: list[int] = []
    for uuid in uuids:
        out += MpsDaemon(root.for_gpu(uuid), uuid).server_pids()
    return out


def cmd_drill(args: argparse.Namespace) -> int:
    ok, _, before = wait_ready(args.config, 60)
    if not ok:
        print("GPU-RESULT step=drill outcome=not-ready-before seconds=0", flush=True)
        return 1
    if args.fake:
        victim_name = sorted(before)[0]
        victims, what = [before[victim_name]], f"agent {victim_name} (CPU dry run: no MPS server)"
        expect_new = {victim_name: before[victim_name]}
    else:
        victims, what = _mps_server_pids(args.config), "the MPS server"
        expect_new = dict(before)  # every client of a dead MPS server dies with it
        if not victims:
            print("GPU-RESULT step=drill outcome=no-mps-server seconds=0", flush=True)
            return 1
    start = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    ok, _secs, after = wait_ready(args.config, args.timeout, not_pids=expect_new)
    doc = {
        "drill": "sigkill_mps_server" if not args.fake else "sigkill_agent",
        "killed": what,
        "killed_pids": victims,
        "ok": ok,
        "seconds": round(time.monotonic() - start, 1),
        "pids_before": before,
        "pids_after": after,
        "events": status_data(_state(args.config))["recent_events"],
    }
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
    print(
        f"GPU-RESULT step=drill name={doc['drill']} outcome={'recovered' if ok else 'NOT-recovered'} "
        f"seconds={doc['seconds']} killed={victims} pids_before={before} pids_after={after}",
        flush=True,
    )
    return 0 if ok else 1


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_summary(args: argparse.Namespace) -> int:
    from colo.bench.report import load_json
    from colo.bench.servers import table_markdown, table_rows

    d = Path(args.dir)
    doc: dict[str, Any] = {"versions": _load(d / "versions.json")}
    bench_path = d / "bench.json"
    lines = ["# llama.cpp under colo (scripts/gpu_llama.sh)", ""]
    if doc["versions"]:
        lines += ["```", json.dumps(doc["versions"], indent=2), "```", ""]
    memory: dict[str, list[int]] = {}
    for p in sorted(d.glob("memory-*.json")):
        m = _load(p) or {}
        used = [a.get("memory_peak_bytes") or a.get("memory_used_bytes") for a in m.get("agents", [])]
        memory[str(m.get("setup"))] = [int(u) for u in used if u]
    if bench_path.exists():
        [result] = load_json(bench_path.read_text())
        doc["table"] = table_rows(result, memory)
        lines += ["## Throughput (ignore_eos, fixed tokens per request)", "", *table_markdown(result, memory), ""]
        for r in doc["table"]:
            print(
                f"GPU-RESULT step=bench setup={r['setup']} streams={r['streams']} "
                f"per_stream={r['per_stream_tok_per_sec']:.1f} aggregate={r['aggregate_tok_per_sec']:.1f} "
                f"server_aggregate={r['server_aggregate_tok_per_sec'] or 0:.1f} "
                f"efficiency={r['scaling_efficiency'] if r['scaling_efficiency'] is not None else '-'} "
                f"p50={r['p50_secs']} p99={r['p99_secs']}",
                flush=True,
            )
    for name in ("memory", "profile", "plan", "capacity", "advise", "drill"):
        parts = sorted(d.glob(f"{name}*.json"))
        if parts:
            doc[name] = {p.stem: _load(p) for p in parts}
    for p in sorted(d.glob("memory*.json")):
        m = _load(p) or {}
        lines += [
            f"## GPU memory per server: {m.get('setup')}",
            "",
            "| agent | used MiB | peak MiB | limit MiB |",
            "|---|---|---|---|",
        ]
        for a in m.get("agents", []):
            mib = lambda v: f"{v / 2**20:,.0f}" if v else "–"  # noqa: E731
            lines.append(
                f"| {a['agent']} | {mib(a['memory_used_bytes'])} | {mib(a['memory_peak_bytes'])} | {mib(a['limit_bytes'])} |"
            )
        lines.append("")
    drill = _load(d / "drill.json")
    if drill:
        lines += [
            "## Recovery drill",
            "",
            f"- SIGKILL {drill['killed']}: {'recovered' if drill['ok'] else 'NOT recovered'} "
            f"in {drill['seconds']} s (killed agents back with new pids; all RUNNING and answering /v1/chat/completions)",
            "",
        ]
    advise = _load(d / "advise.json")
    if advise:
        lines += ["## colo advise", "", f"**{advise.get('headline')}**", ""]
        lines += [f"- [{r['points_to']} +{r['weight']}] {r['text']}" for r in advise.get("reasons", [])]
        lines += [f"- note: {n}" for n in advise.get("notes", [])] + [""]
        print(f"GPU-RESULT step=advise decision={advise.get('decision')} scores={advise.get('scores')}", flush=True)
    (d / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    (d / "results.md").write_text("\n".join(lines) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("config")
    w.add_argument("--timeout", type=float, default=300.0)
    m = sub.add_parser("memory")
    m.add_argument("config")
    m.add_argument("--setup", required=True)
    m.add_argument("--out", required=True)
    dr = sub.add_parser("drill")
    dr.add_argument("config")
    dr.add_argument("--out", required=True)
    dr.add_argument("--timeout", type=float, default=150.0)
    dr.add_argument("--fake", action="store_true")
    s = sub.add_parser("summary")
    s.add_argument("dir")
    args = ap.parse_args()
    return {"wait": cmd_wait, "memory": cmd_memory, "drill": cmd_drill, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
