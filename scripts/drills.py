#!/usr/bin/env python3
"""Run colo's supervision drills on a GPU machine and print a table of outcomes and timings.

    PYTHONPATH=src python3 scripts/drills.py [--timeout 540] [--out DIR]

Runs ``tests/gpu/test_supervise_gpu.py`` (the newsroom's drills, on the session fixture of tests/gpu/newsroom.py)
and ``tests/gpu/test_supervise_small_gpu.py`` (drills 3-5) in one pytest (-m gpu -s), echoes its output, collects the
``GPU-RESULT drill=N name=... outcome=... seconds=... [detect_s=D recover_s=R] detail=...`` lines and prints them
as a table (and as
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
    r"GPU-RESULT drill=(?P<drill>\w+) name=(?P<name>\S+) outcome=(?P<outcome>\S+) "
    r"seconds=(?P<seconds>[\d.]+)(?: detect_s=(?P<detect_s>\S+) recover_s=(?P<recover_s>\S+))? detail=(?P<detail>.*)$"
)
TITLES: dict[int | str, str] = {
    1: "MPS daemon + newsroom up: 9 agents RUNNING under MPS, each under its limit",
    "1b": "one request per agent answered",
    2: "SIGKILL one agent -> restarted, others untouched",
    3: "always-exiting agent -> BACKOFF then FATAL",
    4: "allocates past its limit -> OOM alone",
    5: "illegal-address kernel -> MPS FAULT recovered",
    6: "SIGKILL orchestrator -> agents re-adopted",
    7: "colo apply one limit -> only that agent restarted (and back)",
    8: "SIGKILL the MPS server -> GPU recovered, all serving",
    9: "SIGKILL the MPS control daemon -> daemon restored, all serving",
    10: "SIGSTOP one agent -> killed and restarted, others untouched",
    11: "outside client device-side assert -> contained, nothing restarted",
    "end": "colo down -> no MPS process, zombie or agent left",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds for the whole run")
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
        str(ROOT / "tests" / "gpu" / "test_supervise_small_gpu.py"),
    ]
    start = time.monotonic()
    results: dict[int | str, dict[str, str | None]] = {}
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
                drill = m["drill"]
                results[int(drill) if drill.isdigit() else drill] = m.groupdict()
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
    print(f"{'drill':<6}{'outcome':<9}{'seconds':>8}{'detect':>8}{'recover':>8}  what")
    for n in TITLES:
        r = results.get(n)
        if r is None:
            print(f"{n!s:<6}{'missing':<9}{'-':>8}{'':>8}{'':>8}  {TITLES[n]}")
            continue
        det, rec = r.get("detect_s") or "", r.get("recover_s") or ""
        print(f"{n!s:<6}{r['outcome']!s:<9}{float(r['seconds'] or 0):>8.1f}{det:>8}{rec:>8}  {TITLES[n]}")
        print(f"{'':<39}{(r['detail'] or '')[:300]}")
    print(f"total {total:.0f} s; pytest exit code {rc}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "drills.json").write_text(json.dumps({"rc": rc, "seconds": total, "drills": results}, indent=2))
        (out / "drills.log").write_text("".join(lines))
    return rc


if __name__ == "__main__":
    sys.exit(main())
