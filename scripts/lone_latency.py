"""Issue 22: a lone request to a bert-tiny agent over HTTP — its p50/p99 and where its time goes.

    python scripts/lone_latency.py                       # CPU: starts an agent here, 500 requests per route
    python scripts/lone_latency.py --device cuda --dtype float16 --requests 2000
    python scripts/lone_latency.py --url http://127.0.0.1:9101 --model MODEL   # an agent already running
    python scripts/lone_latency.py --src ../old/src      # the agent of another colo tree (a before/after)
    python scripts/lone_latency.py --device cuda --dtype float16 --cuda-graphs both   # graphs off, then on

Starts ONE built-in agent the way colo does (``python -m colo.modelserver.serve``, its own uvicorn settings) on
bert-tiny (``google/bert_uncased_L-2_H-128_A-2``: the catalog's 2-layer BERT, random weights, nothing
downloaded), waits for ``/health``, then sends requests one at a time over one keep-alive connection (stdlib
``http.client``, TCP_NODELAY: the client adds little of its own): ``--warmup`` not counted, then
``--requests`` timed, for each route in turn:

- ``POST /infer`` with ``input_ids`` of 1 × ``--tokens`` (16);
- ``POST /v1/embeddings`` with the same ids as one token array (``encoding_format`` float).

Prints, per route, p50/p99/mean of the client's wall time per request; for ``/infer`` also p50/p99 of each
request's time outside its own forward (wall time less the answer's ``timing.forward_ms``: what issue 22 cuts,
free of the forward's own noise); and the agent's own mean per phase
over exactly those requests (``colo_agent_phase_seconds`` read before and after: parse, tokenize, queue,
to_device, forward, to_host, serialize), and what the started agent's uvicorn runs on (its log says).
``--json`` prints the same as one JSON object. The agent is stopped on exit (SIGTERM, then SIGKILL).
What the agent's ``/health`` says of its CUDA graphs after the timed requests is printed too (graphs held,
their pools, replays; or why they are off). ``--cuda-graphs on|off`` passes the agent's own switch;
``--cuda-graphs both`` measures an agent with graphs off, then one with them on, one after the other (two
tables; with ``--json``, ``{"runs": {"off": ..., "on": ...}}``).
On ``--device cpu`` the agent gets one torch thread unless ``--torch-threads`` says otherwise. Figures are of
the machine it ran on: label CPU runs as CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"
AGENT = "lone"
TOKEN_ID_BASE = 1000  # below bert-tiny's vocabulary (30522), not special tokens
START_TIMEOUT_SECS = 300.0
REQUEST_TIMEOUT_SECS = 60.0


def config_text(model: str, port: int) -> str:
    """A colo.yaml with one agent serving ``model`` on ``port`` (batch_size 32, max_seq_len 128)."""
    return (
        "version: 1\n"
        "gpus: [{name: any, memory: 80GiB}]\n"
        f"models:\n  {model}: {{memory: 1GiB, batch_size: 32, max_seq_len: 128}}\n"
        f"agents:\n  {AGENT}: {{models: [{model}], port: {port}}}\n"
    )


def request_bodies(model: str, tokens: int) -> dict[str, bytes]:
    """The JSON body of each timed route: 1 × ``tokens`` ids."""
    ids = [TOKEN_ID_BASE + t for t in range(tokens)]
    return {
        "/infer": json.dumps({"model": model, "input_ids": [ids]}, separators=(",", ":")).encode(),
        "/v1/embeddings": json.dumps(
            {"model": model, "input": ids, "encoding_format": "float"}, separators=(",", ":")
        ).encode(),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection (stdlib, TCP_NODELAY): ``post`` and ``get`` return (status, body)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_SECS)
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; a kept-alive connection the server closed meanwhile is opened again once."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, self.prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2 or not reused:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def time_route(
    conn: Connection,
    path: str,
    body: bytes,
    *,
    warmup: int,
    requests: int,
    clock: Callable[[], float] = time.perf_counter,
    forward_secs: list[float] | None = None,
) -> list[float]:
    """Seconds per request of ``requests`` POSTs of ``body`` to ``path``, one at a time, after ``warmup``
    untimed ones; ``forward_secs`` (``/infer`` only) receives each timed answer's own ``timing.forward_ms``.
    Raises RuntimeError on an answer other than 200."""
    times: list[float] = []
    for i in range(warmup + requests):
        started = clock()
        status, answer = conn.request("POST", path, body)
        elapsed = clock() - started
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {answer[:300]!r}")
        if i >= warmup:
            times.append(elapsed)
            if forward_secs is not None:
                forward_secs.append(json.loads(answer)["timing"]["forward_ms"] / 1000.0)
    return times


def measure(url: str, model: str, *, tokens: int, warmup: int, requests: int) -> dict[str, Any]:
    """Every route of :func:`request_bodies` against the agent at ``url``: latency (ms) and phase means (ms);
    for ``/infer`` also each request's time outside its own forward (its wall time less ``timing.forward_ms``)."""
    from colo.bench import stats
    from colo.modelserver.metrics import phase_means_ms

    conn = Connection(url)
    try:
        status, health = conn.request("GET", "/health")
        if status != 200:
            raise RuntimeError(f"GET /health: {status} {health[:300]!r}")
        routes: dict[str, Any] = {}
        for path, body in request_bodies(model, tokens).items():
            time_route(conn, path, body, warmup=warmup, requests=0)
            before = conn.request("GET", "/metrics")[1].decode()
            forward: list[float] | None = [] if path == "/infer" else None
            times = time_route(conn, path, body, warmup=0, requests=requests, forward_secs=forward)
            after = conn.request("GET", "/metrics")[1].decode()
            lat = stats.summarize_latencies(times)
            row: dict[str, Any] = {
                "requests": lat.count,
                "p50_ms": lat.p50_secs * 1000.0,
                "p99_ms": lat.p99_secs * 1000.0,
                "mean_ms": lat.mean_secs * 1000.0,
                "phases_ms": phase_means_ms(after, since=before),  # the timed requests' only
            }
            if forward is not None:
                outside = stats.summarize_latencies([t - f for t, f in zip(times, forward, strict=True)])
                row["outside_forward_p50_ms"] = outside.p50_secs * 1000.0
                row["outside_forward_p99_ms"] = outside.p99_secs * 1000.0
            routes[path] = row
        info = json.loads(health)
        status, after = conn.request("GET", "/health")
        graphs = json.loads(after).get("cuda_graphs") if status == 200 else None
        return {
            "device": info.get("device"),
            "device_name": info.get("device_name"),
            "tokens": tokens,
            "routes": routes,
            "cuda_graphs": graphs,
        }
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(
    folder: Path,
    model: str,
    port: int,
    device: str,
    dtype: str | None,
    extra: Sequence[str],
    torch_threads: int | None = None,
    src: Path = ROOT / "src",
    *,
    config_yaml: str | None = None,
    agent: str = AGENT,
    entry: Sequence[str] = ("-m", "colo.modelserver.serve"),
) -> subprocess.Popen[bytes]:
    """``python -m colo.modelserver.serve`` for one agent on ``model``, colo from ``src`` (first on the path);
    ``torch_threads`` sets its ``OMP_NUM_THREADS`` (torch's intra-op threads). ``config_yaml``: the colo.yaml
    to serve ``agent`` of (default :func:`config_text`); ``entry``: what python runs instead of
    ``-m colo.modelserver.serve`` (given the same arguments)."""
    config = folder / "colo.yaml"
    config.write_text(config_yaml if config_yaml is not None else config_text(model, port))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    if torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    command = [sys.executable, *entry, "--agent", agent, "--config", str(config),
               "--device", device, *(("--dtype", dtype) if dtype else ()), *extra]
    log = (folder / "agent.log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None, timeout: float) -> None:
    """Until ``url``'s /health answers 200. Raises RuntimeError when the agent exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    conn = Connection(url)
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                text = log.read_text(errors="replace")[-3000:] if log else ""
                raise RuntimeError(f"the agent exited with {proc.returncode}:\n{text}")
            try:
                if conn.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
    finally:
        conn.close()
    raise RuntimeError(f"{url}/health did not answer 200 within {timeout:.0f} s")


def http_of(log: Path) -> str | None:
    """What the agent's log says its HTTP runs on (``uvicorn with httptools on uvloop``), or None."""
    found = re.search(r"HTTP: (uvicorn with \S+ on \S+)", log.read_text(errors="replace"))
    return found.group(1) if found else None


def stop(proc: subprocess.Popen[bytes], grace_secs: float = 30.0) -> None:
    """SIGTERM (the agent's graceful stop), SIGKILL when it is still there after ``grace_secs``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_secs)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def table(result: dict[str, Any]) -> list[str]:
    """The result as Markdown lines: one row per route, then its phases."""
    label = f"{result.get('device')} ({result.get('device_name')})"
    lines = [
        f"a lone request of 1 × {result['tokens']} ids, on {label}, HTTP: {result.get('http') or 'not known'}",
        "",
        "| route | requests | p50 ms | p99 ms | mean ms | outside the forward, p50 / p99 ms | agent's phases, mean ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, row in result["routes"].items():
        phases = ", ".join(f"{k} {v:.3f}" for k, v in row["phases_ms"].items())
        outside = (
            f"{row['outside_forward_p50_ms']:.3f} / {row['outside_forward_p99_ms']:.3f}"
            if "outside_forward_p50_ms" in row
            else "–"
        )
        lines.append(
            f"| `{path}` | {row['requests']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} "
            f"| {outside} | {phases} |"
        )
    lines += ["", graphs_line(result.get("cuda_graphs"))]
    return lines


def graphs_line(graphs: dict[str, Any] | None) -> str:
    """What the agent's /health said of its CUDA graphs after the timed requests, in one line."""
    if not graphs:
        return "CUDA graphs: not reported by the agent"
    if not graphs.get("enabled"):
        return f"CUDA graphs: off ({graphs.get('off_reason')})"
    shapes = {m: g["shapes"] for m, g in graphs.get("models", {}).items()}
    mib = 1024 * 1024
    return (
        f"CUDA graphs: {graphs['graphs']} held {shapes}, pools {graphs['pool_bytes'] / mib:.1f} of "
        f"{graphs['budget_bytes'] / mib:.1f} MiB, {graphs['replays']} replays, {graphs['failures']} failures"
        + (f"; no new shapes: {graphs['full']}" if graphs.get("full") else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an agent already running (starts nothing)")
    parser.add_argument("--model", default=BERT_TINY, help=f"model id (default {BERT_TINY})")
    parser.add_argument("--device", default="cpu", help="the started agent's --device (default cpu)")
    parser.add_argument("--dtype", default=None, help="the started agent's --dtype (default: the model's)")
    parser.add_argument("--tokens", type=int, default=16, help="ids in the one row (default 16)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed requests per route (default 50)")
    parser.add_argument("--requests", type=int, default=500, help="timed requests per route (default 500)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="the started agent's OMP_NUM_THREADS (default on cpu: 1, as a 1 × 16 forward gains nothing from "
        "more and they would contend with the HTTP and device threads; elsewhere torch's own)",
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for the agent")
    parser.add_argument(
        "--cuda-graphs",
        choices=["on", "off", "both"],
        default=None,
        help="the started agent's --cuda-graphs (default: the agent's own, on); both: an agent with graphs off, "
        "then one with graphs on",
    )
    parser.add_argument(
        "--src", type=Path, default=ROOT / "src", help="the src/ folder of the colo to start (default: this tree's)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.url is not None and args.cuda_graphs is not None:
        parser.error("--cuda-graphs is for an agent this script starts (not with --url)")
    settings: list[str | None] = ["off", "on"] if args.cuda_graphs == "both" else [args.cuda_graphs]
    results: dict[str, dict[str, Any]] = {}
    for setting in settings:
        try:
            results[setting or "default"] = run_once(args, setting)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if len(results) == 1:
        (result,) = results.values()
        print(json.dumps(result, indent=2) if args.json else "\n".join(table(result)))
        return 0
    if args.json:
        print(json.dumps({"runs": results}, indent=2))
        return 0
    for setting, result in results.items():
        print("\n".join([f"### --cuda-graphs {setting}", "", *table(result), ""]))
    return 0


def run_once(args: argparse.Namespace, cuda_graphs: str | None) -> dict[str, Any]:
    """Measure the agent at ``args.url``, or one started here (with ``--cuda-graphs`` when given) and stopped
    after. Raises RuntimeError when the agent does not come up or answers other than 200."""
    with tempfile.TemporaryDirectory(prefix="colo-lone-") as tmp:
        proc = None
        url = args.url
        try:
            if url is None:
                port = free_port()
                threads = args.torch_threads if args.torch_threads is not None else (1 if args.device == "cpu" else None)
                extra = [*args.serve_arg, *(("--cuda-graphs", cuda_graphs) if cuda_graphs else ())]
                proc = start_agent(
                    Path(tmp), args.model, port, args.device, args.dtype, extra, threads, args.src.resolve()
                )
                url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, Path(tmp) / "agent.log", START_TIMEOUT_SECS)
            result = measure(url, args.model, tokens=args.tokens, warmup=args.warmup, requests=args.requests)
            result["http"] = http_of(Path(tmp) / "agent.log") if proc is not None else None
            result["cuda_graphs_switch"] = cuda_graphs
            return result
        finally:
            if proc is not None:
                stop(proc)


if __name__ == "__main__":
    sys.exit(main())
