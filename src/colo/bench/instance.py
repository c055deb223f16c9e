"""One benchmark instance: ``python -m colo.bench.instance '<InstanceSpec JSON>'``.

Protocol on stdout (one JSON object per line, prefixed so library output cannot be mistaken for it):

- ``COLO-BENCH READY {...}`` after the workload is loaded, warmed up and captured (facts for the report);
- then the instance waits for a line ``GO`` on stdin (the harness's barrier: every instance starts together);
- ``COLO-BENCH RESULT {...}``: items, elapsed seconds, per-request latencies, after the timed window; then it
  waits for the next ``GO`` (another window) until stdin closes or says ``QUIT``;
- ``COLO-BENCH ERROR {...}`` instead, if anything failed (the message and the exception type).

The exit status is 0 when stdin closes after READY, 1 after ERROR.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from typing import Any, TextIO

from colo.bench.loads import Workload, make_workload
from colo.bench.spec import InstanceSpec
from colo.clock import SYSTEM_CLOCK, Clock
from colo.gpu.mps.env import CLIENT_VARS

PREFIX = "COLO-BENCH "
# What made this instance an MPS client (or not), reported with its results.
REPORTED_ENV = CLIENT_VARS


def emit(stream: TextIO, tag: str, payload: dict[str, Any]) -> None:
    """Write one protocol line and flush."""
    stream.write(f"{PREFIX}{tag} {json.dumps(payload)}\n")
    stream.flush()


def timed_loop(workload: Workload, duration_secs: float, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """Run requests back to back for ``duration_secs`` (the last one may end past it); return the result."""
    latencies: list[float] = []
    items = 0.0
    extra: dict[str, float] = {}
    start = clock.monotonic()
    now = start
    while now - start < duration_secs:
        t0 = clock.monotonic()
        outcome = workload.request()
        now = clock.monotonic()
        latencies.append(now - t0)
        items += outcome.items
        for key, value in outcome.extra.items():
            extra[key] = extra.get(key, 0.0) + value
    return {
        "items": items,
        "elapsed_secs": now - start,
        "started_monotonic": start,  # CLOCK_MONOTONIC is system-wide: comparable across instances
        "latencies_secs": latencies,
        "extra": extra,
    }


def run(spec: InstanceSpec, stdin: TextIO, stdout: TextIO) -> int:
    """Prepare, report READY, wait for GO, run the timed loop, report RESULT (or ERROR). Returns the status."""
    workload: Workload | None = None
    try:
        workload = make_workload(spec.kind, spec.params)
        info = dict(workload.prepare())
        info["env"] = {k: os.environ[k] for k in REPORTED_ENV if k in os.environ}
        emit(stdout, "READY", {"pid": os.getpid(), "unit": workload.unit, "info": info})
        while True:
            line = stdin.readline()
            if not line or line.strip() == "QUIT":  # the harness closed stdin: done
                return 0
            if line.strip() != "GO":
                emit(stdout, "ERROR", {"type": "Aborted", "message": f"expected GO, got {line.strip()!r}"})
                return 1
            result = timed_loop(workload, spec.duration_secs)
            result["unit"] = workload.unit
            emit(stdout, "RESULT", result)
    except Exception as exc:
        emit(
            stdout,
            "ERROR",
            {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=8)},
        )
        return 1
    finally:
        if workload is not None:
            with contextlib.suppress(Exception):  # closing after a failure must not hide the first error
                workload.close()


def die_with_parent() -> None:
    """Linux: ask the kernel to SIGTERM this process when the harness dies (instances run in their own
    session, so a killed harness would otherwise leave them holding GPU memory). The kernel signals when the
    harness *thread* that spawned the instance ends: the harness spawns from the thread that runs the bench."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    parent = os.environ.get("COLO_BENCH_PARENT_PID", "")
    if parent.isdigit() and os.getppid() != int(parent):  # the harness died before prctl took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m colo.bench.instance '<InstanceSpec JSON>'\n")
        return 2
    return run(InstanceSpec.from_json(args[0]), sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
