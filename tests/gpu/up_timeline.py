"""Issue 21's `colo up` target, measured: the sized newsroom brought up ``--runs`` times in a row (each in a fresh
state dir, torn down after), with where each run's seconds went. A benchmark for the GPU machine, not a test:
it prints, it asserts nothing.

    python3 tests/gpu/up_timeline.py [--runs 2]

Per run: ``UP run=N up_s=S daemon_s=D`` (``colo up`` started -> every agent RUNNING and answering ``/infer``;
-> its MPS control daemon seen), the launcher's ready line (its import seconds), and per agent
``AGENT name requested_s=R ready_s=T phases...``: when colo asked for the agent (seconds after ``colo up``
started: the CLI, the plan, the MPS daemon before it) and when it first answered ``/health`` ready, from the
``start phases`` line of its log (logged when ready, with the seconds since its request). The first run pays a
cold page cache for torch's libraries on a fresh machine; the later ones are what a `colo up` costs after it.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newsroom import Newsroom

PHASES_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*start phases: (.*) total ([0-9.]+)s")


def agent_lines(logs: Path, t0_wall: float) -> list[str]:
    """One line per agent log with a ``start phases`` line: request and ready times after ``t0_wall``."""
    out = []
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = PHASES_LINE.match(line)
            if m is None:
                continue
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            total = float(m.group(3))
            out.append(
                f"AGENT {log.stem} requested_s={at - total - t0_wall:.2f} ready_s={at - t0_wall:.2f} {m.group(2)}"
            )
            break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        room = Newsroom()
        try:
            t0_wall = time.time()
            room.bring_up()
            print(f"UP run={run} up_s={room.up_secs:.2f} daemon_s={room.daemon_up_secs or float('nan'):.2f}", flush=True)
            print(f"  {room.start_timeline()}")
            for line in agent_lines(room.state_dir / "logs", t0_wall):
                print(f"  {line}")
            fs = room.state_dir / "logs" / "forkserver.log"
            if fs.exists():
                for line in fs.read_text(errors="replace").splitlines():
                    if line.startswith(("launcher ready", "preloaded", "prebuilt")):
                        print(f"  launcher: {line.strip()[:300]}")
        finally:
            room.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
