"""Load benchmark of the colo API from a second process: open-loop GETs at a fixed rate, p50/p99 latency.

Starts ``colo serve CONFIG`` in a child process (unless ``--url`` points at a running one), then for each
route sends requests at ``--rate`` per second for ``--secs`` seconds on an open-loop schedule (request *i*
is due at ``t0 + i / rate`` whether or not earlier ones returned) over keep-alive HTTP/1.1 connections
(``httpx.AsyncClient``), and reports latency percentiles two ways: *service* (from the moment the request was
sent) and *scheduled* (from the moment it was due, which counts any queueing in the client too — no
coordinated omission). Percentiles are :func:`colo.bench.stats.percentile`'s (linear interpolation between
closest ranks, numpy's default), the definition every figure in docs/benchmarks.md uses.

    python benchmarks/api_load.py examples/newsroom/colo.yaml --rate 500 --secs 30 --json out.json

Prints a Markdown table (and the machine) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # an uninstalled checkout works

from colo.bench.stats import percentile  # noqa: E402

ROUTES = ("/mps/allocation", "/gpu/info")
MAX_CONNECTIONS = 64  # requests in flight at once; at 500 req/s a healthy server needs a few


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def start_server(config: Path, port: int, state_dir: Path) -> subprocess.Popen[bytes]:
    """``colo serve`` in a child process (PYTHONPATH=src so an uninstalled checkout works)."""
    env = {**os.environ, "COLO_STATE_DIR": str(state_dir)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        "-c",
        "from colo.cli.main import main; main()",
        "serve",
        str(config),
        "--port",
        str(port),
        "--no-gpu",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout_secs: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"colo serve exited with {proc.returncode}: {err}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"no answer from {url} in {timeout_secs:.0f} s")


def client(url: str) -> httpx.AsyncClient:
    """Keep-alive HTTP/1.1 connections with ``TCP_NODELAY`` (without it every keep-alive answer may wait on
    Nagle + delayed ACK)."""
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        retries=1,  # a kept-alive connection the server closed meanwhile (uvicorn's keep-alive timeout)
    )
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=10.0)


async def run_route(url: str, route: str, rate: float, secs: float, warmup_secs: float) -> dict[str, Any]:
    """Open-loop load on one route; latencies in milliseconds."""
    http = client(url)
    warm_until = time.perf_counter() + warmup_secs
    while time.perf_counter() < warm_until:
        await http.get(route)
    total = int(rate * secs)
    service: list[float] = []
    scheduled: list[float] = []
    errors: dict[str, int] = {}
    sizes: list[int] = []

    gate = asyncio.Semaphore(MAX_CONNECTIONS)

    async def one(due: float) -> None:
        try:
            async with gate:  # queue here, FIFO and cheap: httpx's pool slows down with thousands waiting
                sent = time.perf_counter()
                response = await http.get(route)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        done = time.perf_counter()
        if response.status_code != 200:
            errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
            return
        sizes.append(len(response.content))
        service.append((done - sent) * 1000)
        scheduled.append((done - due) * 1000)

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await http.aclose()
    return {
        "route": route,
        "target_rate_per_sec": rate,
        "secs": secs,
        "requests": total,
        "ok": len(service),
        "errors": errors,
        "achieved_rate_per_sec": round(len(service) / elapsed, 1),
        "body_bytes": int(statistics.median(sizes)) if sizes else 0,
        "service_ms": {p: round(percentile(service, q), 3) for p, q in (("p50", 50), ("p99", 99), ("max", 100))},
        "scheduled_ms": {p: round(percentile(scheduled, q), 3) for p, q in (("p50", 50), ("p99", 99), ("max", 100))},
    }


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at the end {load}"
    )


def markdown(results: list[dict[str, Any]], where: str) -> str:
    lines = [
        "| route | target req/s | achieved req/s | requests | errors | body | p50 ms | p99 ms | max ms | p99 ms (from schedule) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `GET {r['route']}` | {r['target_rate_per_sec']:.0f} | {r['achieved_rate_per_sec']:.0f} | "
            f"{r['requests']} | {sum(r['errors'].values())} | {r['body_bytes']} B | {r['service_ms']['p50']:.2f} | "
            f"{r['service_ms']['p99']:.2f} | {r['service_ms']['max']:.1f} | {r['scheduled_ms']['p99']:.2f} |"
        )
    lines.append("")
    lines.append(f"Machine: {where}. Percentiles: linear interpolation between closest ranks (colo.bench.stats).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="examples/newsroom/colo.yaml", type=Path)
    ap.add_argument("--url", help="an API already running (else colo serve CONFIG is started)")
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second per route")
    ap.add_argument("--secs", type=float, default=30.0, help="seconds per route")
    ap.add_argument("--warmup-secs", type=float, default=2.0)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    proc = None
    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="colo-bench-")
        port = free_port()
        proc = start_server(args.config, port, Path(tmp.name))
        url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        results = [asyncio.run(run_route(url, r, args.rate, args.secs, args.warmup_secs)) for r in ROUTES]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    where = machine()
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print()
    print(markdown(results, where))


if __name__ == "__main__":
    main()
