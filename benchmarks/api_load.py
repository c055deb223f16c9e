"""Load benchmark of the colo API from a second process: open-loop GETs at a fixed rate, p50/p99 latency.

Starts ``colo serve CONFIG`` in a child process (unless ``--url`` points at a running one), then for each
route sends requests at ``--rate`` per second for ``--secs`` seconds on an open-loop schedule (request *i*
is due at ``t0 + i / rate`` whether or not earlier ones returned) over keep-alive connections (raw asyncio streams: the client costs little CPU), and reports
latency percentiles two ways: *service* (from the moment the request was sent) and *scheduled* (from the
moment it was due, which counts any queueing in the client too — no coordinated omission).

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

ROUTES = ("/mps/allocation", "/gpu/info")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (``pct`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def start_server(config: Path, port: int, state_dir: Path) -> subprocess.Popen[bytes]:
    """``colo serve`` in a child process (PYTHONPATH=src so an uninstalled checkout works)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "COLO_STATE_DIR": str(state_dir)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), env.get("PYTHONPATH", "")) if p)
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


class Pool:
    """Keep-alive HTTP/1.1 connections over raw asyncio streams: a few microseconds of client CPU per request,
    so the load generator does not become what is measured on a small machine."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self, path: str) -> tuple[int, int]:
        """GET ``path``; (status, body bytes). A kept-alive connection the server closed meanwhile (uvicorn's
        keep-alive timeout) is retried once on a new one, as HTTP clients do."""
        if self.idle:
            conn = self.idle.pop()
            try:
                return await self._exchange(path, conn)
            except (OSError, asyncio.IncompleteReadError):
                conn[1].close()
        return await self._exchange(path, None)

    async def _exchange(
        self, path: str, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
    ) -> tuple[int, int]:
        if conn is not None:
            reader, writer = conn
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.opened += 1
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status, length

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def run_route(url: str, route: str, rate: float, secs: float, warmup_secs: float) -> dict[str, Any]:
    """Open-loop load on one route; latencies in milliseconds."""
    hostport = url.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    pool = Pool(host, int(port))
    warm_until = time.perf_counter() + warmup_secs
    while time.perf_counter() < warm_until:
        await pool.get(route)
    total = int(rate * secs)
    service: list[float] = []
    scheduled: list[float] = []
    errors: dict[str, int] = {}
    sizes: list[int] = []

    async def one(due: float) -> None:
        sent = time.perf_counter()
        try:
            status, size = await asyncio.wait_for(pool.get(route), timeout=10)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        done = time.perf_counter()
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
            return
        sizes.append(size)
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
    pool.close()
    return {
        "route": route,
        "target_rate_per_sec": rate,
        "secs": secs,
        "requests": total,
        "ok": len(service),
        "errors": errors,
        "connections": pool.opened,
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
    lines.append(f"Machine: {where}.")
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
