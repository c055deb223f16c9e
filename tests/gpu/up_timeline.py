"""Issue 21's `colo up` target, measured: the sized newsroom brought up ``--runs`` times in a row (each in a fresh
state dir, torn down after), with where each run's seconds went. A benchmark for the GPU machine, not a test:
it prints, it asserts nothing.

    python3 tests/gpu/up_timeline.py [--runs 2] [--node-launcher]

Per run: ``UP run=N up_s=S daemon_s=D`` (``colo up`` started -> every agent RUNNING and answering ``/infer``;
-> its MPS control daemon seen), the launcher's ready line (its import seconds), and per agent
``AGENT name requested_s=R ready_s=T phases...``: when colo asked for the agent (seconds after ``colo up``
started: the CLI, the plan, the MPS daemon before it) and when it first answered ``/health`` ready, from the
``start phases`` line of its log (logged when ready, with the seconds since its request). The first run pays a
cold page cache for torch's libraries on a fresh machine; the later ones are what a `colo up` costs after it.

``--node-launcher``: first ``colo launcher start --models-of`` the sized newsroom (on a private socket; its
``NODE-LAUNCHER`` line says how long it took), so every ``colo up`` forks its agents from that already imported
launcher; after each run's ``colo down``, ``NODE-LAUNCHER-AFTER-DOWN`` says whether the launcher holds a GPU
process and whether any process it forked is left (neither may be); it is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newsroom import COLO, SIZED, Newsroom

from colo.launch.node_launcher import SOCKET_ENV
from testkit import offline_child_env

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


@contextlib.contextmanager
def node_launcher() -> Iterator[int]:
    """``colo launcher start`` on a private socket (this process's children find it through the environment);
    yields its pid; ``colo launcher stop`` after."""
    sock = Path(tempfile.mkdtemp(prefix="cl", dir="/tmp")) / "launcher.sock"
    os.environ[SOCKET_ENV] = str(sock)
    t0 = time.monotonic()
    r = subprocess.run(
        [*COLO, "launcher", "start", "--models-of", str(SIZED), "--log", str(sock.parent / "launcher.log")],
        env=offline_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"NODE-LAUNCHER start_s={time.monotonic() - t0:.2f} rc={r.returncode} {r.stdout.strip()} {r.stderr.strip()}")
    status = subprocess.run([*COLO, "launcher", "status"], env=offline_child_env(), capture_output=True, text=True)
    print(f"  {status.stdout.strip()}")
    pid = int(re.search(r"pid (\d+)", r.stdout).group(1)) if r.returncode == 0 and "pid" in r.stdout else 0
    try:
        yield pid
    finally:
        stop = subprocess.run([*COLO, "launcher", "stop"], env=offline_child_env(), capture_output=True, text=True)
        print(f"NODE-LAUNCHER stop rc={stop.returncode} {stop.stdout.strip()}")


def gpu_pids() -> set[int]:
    """Every process NVML lists on any GPU (compute and MPS clients)."""
    from colo.gpu.nvml import NvmlBackend

    backend = NvmlBackend()
    try:
        return {p.pid for p in backend.processes()}
    finally:
        backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--node-launcher", action="store_true", help="Fork from a node launcher started first.")
    args = parser.parse_args()
    with node_launcher() if args.node_launcher else contextlib.nullcontext(0) as node_pid:
        runs(args.runs, node_pid)
    return 0


def runs(count: int, node_pid: int) -> None:
    for run in range(1, count + 1):
        room = Newsroom()
        try:
            t0_wall = time.time()
            room.bring_up()
            print(
                f"UP run={run} up_s={room.up_secs:.2f} daemon_s={room.daemon_up_secs or float('nan'):.2f}", flush=True
            )
            print(f"  {room.start_timeline()}")
            for line in agent_lines(room.state_dir / "logs", t0_wall):
                print(f"  {line}")
            fs = room.state_dir / "logs" / "forkserver.log"
            if fs.exists():
                for line in fs.read_text(errors="replace").splitlines():
                    if line.startswith(("preloaded", "prebuilt")) or "launcher ready" in line:
                        print(f"  launcher: {line.strip()[:300]}")
        finally:
            room.close()
        if node_pid:
            import psutil

            on_gpu = gpu_pids()
            left = [c.pid for c in psutil.Process(node_pid).children(recursive=True) if c.status() != "zombie"]
            print(
                f"NODE-LAUNCHER-AFTER-DOWN run={run} pid={node_pid} alive={Path(f'/proc/{node_pid}').exists()} "
                f"gpu_processes={sorted(on_gpu) or 'none'} launcher_on_gpu={node_pid in on_gpu} "
                f"descendants={left or 'none'}"
            )


if __name__ == "__main__":
    sys.exit(main())
