#!/usr/bin/env python3
"""Run colo's supervision drills on a GPU machine and print a table of outcomes and timings.

    PYTHONPATH=src python3 scripts/drills.py [--timeout 540] [--out DIR]

Runs ``tests/gpu/test_supervise_gpu.py`` (pytest -m gpu -s), echoes its output, collects the
``GPU-RESULT drill=N name=... outcome=... seconds=... detail=...`` lines and prints them as a table (and as
``drills.json`` under ``--out`` / ``$OUT`` when given). Exit code: pytest's (124 on timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(
    r"GPU-RESULT drill=(?P<drill>\d+) name=(?P<name>\S+) outcome=(?P<outcome>\S+) "
    r"seconds=(?P<seconds>[\d.]+) detail=(?P<detail>.*)$"
)
TITLES = {
    1: "newsroom up: 9 agents RUNNING under MPS, each under its limit",
    2: "SIGKILL one agent -> restarted, others untouched",
    3: "always-exiting agent -> BACKOFF then FATAL",
    4: "allocates past its limit -> OOM alone",
    5: "illegal-address kernel -> MPS FAULT recovered",
    6: "SIGKILL orchestrator -> agents re-adopted",
    7: "colo apply one limit -> only that agent restarted",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=540.0, help="seconds for the whole run")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for drills.json and the log")
    args = ap.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-s",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        str(ROOT / "tests" / "gpu" / "test_supervise_gpu.py"),
    ]
    start = time.monotonic()
    results: dict[int, dict[str, str]] = {}
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    rc = 0
    try:
        for raw in proc.stdout:
            sys.stdout.write(raw)
            lines.append(raw)
            m = LINE.search(raw.rstrip("\n"))
            if m:
                results[int(m["drill"])] = m.groupdict()
            if time.monotonic() - start > args.timeout:
                proc.kill()
                rc = 124
                break
        rc = proc.wait() if rc == 0 else rc
    finally:
        if proc.poll() is None:
            proc.kill()
    total = time.monotonic() - start
    print()
    print(f"{'drill':<6}{'outcome':<9}{'seconds':>8}  what")
    for n in sorted(TITLES):
        r = results.get(n)
        if r is None:
            print(f"{n:<6}{'missing':<9}{'-':>8}  {TITLES[n]}")
            continue
        print(f"{n:<6}{r['outcome']:<9}{float(r['seconds']):>8.1f}  {TITLES[n]}")
        print(f"{'':<23}{r['detail'][:200]}")
    print(f"total {total:.0f} s; pytest exit code {rc}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "drills.json").write_text(json.dumps({"rc": rc, "seconds": total, "drills": results}, indent=2))
        (out / "drills.log").write_text("".join(lines))
    return rc


if __name__ == "__main__":
    sys.exit(main())
