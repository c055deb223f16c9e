"""Issue 22: the agent's host side under load — ``/v1/embeddings`` at 16 clients × 8 texts of ~128 tokens, on a CPU.

    python scripts/agent_host_path.py                    # starts an agent here (CPU), 16 clients, 10 s
    python scripts/agent_host_path.py --src ../old/src   # the agent of another colo tree (a before/after)
    python scripts/agent_host_path.py --url http://127.0.0.1:9311 --model minilm   # an agent already running

What ``scripts/bench_embeddings.sh`` measures on a GPU against infinity-emb, with the device's arithmetic taken
out: ONE built-in agent, colo's own ``colo.modelserver.serve`` (its uvicorn, app, runtime, device thread;
``--device cpu``, one torch thread), on a random-weight BertModel with MiniLM-L6's graph — 6 layers, the same
modules and ops per forward — but 32 wide (2 heads, intermediate 64, vocabulary 512). Its tokenizer is the
bench's own local WordPiece one (``colo.bench.loads.embeddings_model``: every bench word one token), its
``batch_size`` 64 and ``max_seq_len`` 256, as in the GPU bench.

``--forward first-token`` (the default; this harness only, never the shipped agent): the started process is
this script, which runs ``colo.modelserver.serve``'s ``main`` with the runtime's model loader wrapped so that
each batch runs the real model on the FIRST token of each row and answers that hidden state for every
position. Every op and module call of the forward still runs (each releases and takes back the GIL, as an
eager forward does on a GPU, where launches, not arithmetic, are its cost), but a CPU spends ~3 ms on it
instead of ~55 ms for 64 × 128: what is left is the host side. ``--forward full`` runs the model as it is.

The load: ``--clients`` connections (one asyncio task each, on uvloop when installed: a raw HTTP/1.1 keep-alive
client that costs little CPU of its own), each sending the bench's body (``colo.bench.loads.embeddings``:
``--texts`` texts of ``--tokens`` tokens, ``encoding_format`` float) back to back; ``--warmup`` seconds not
counted, then ``--window`` seconds timed. Prints requests/s and sequences/s, p50/p99, and over exactly the
window: the agent's mean per phase (``colo_agent_phase_seconds``), requests and rows per device batch, the
forwards' share of the window (``colo_agent_forward_seconds``), the agent's CPU per request — its event loop's
thread (the main thread) apart from the others (the device thread, any pool) — and the load generator's own
CPU share. ``--json`` prints the same as one JSON object. The agent is stopped on exit.

Figures are of the machine it ran on (label CPU runs as CPU, with the core count); the load generator shares
the machine's cores with the agent, so compare runs of one machine, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lone_latency import START_TIMEOUT_SECS, free_port, http_of, start_agent, stop, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
AGENT = "embedder"
MODEL = "minilm"
REQUEST_TIMEOUT_SECS = 60.0
FORWARDS = ("first-token", "full")
AGENT_PROCESS = "--agent-process"  # argv[1] of the started agent (this script again)


def config_text(folder: Path, port: int) -> str:
    """The colo.yaml of the GPU bench (``scripts/bench_embeddings.sh``): one agent, one model from ``folder``."""
    return (
        "version: 1\n"
        "gpus: [{name: any, memory: 80GiB}]\n"
        f'models:\n  {MODEL}: {{path: "{folder}", memory: 2GiB, batch_size: 64, max_seq_len: 256}}\n'
        f"agents:\n  {AGENT}: {{models: [{MODEL}], port: {port}}}\n"
    )


def write_host_model(folder: Path, layers: int = 6, hidden: int = 32) -> Path:
    """MiniLM-L6's graph (``layers`` BertLayers) at ``hidden`` wide: the forward's ops without its arithmetic."""
    from colo.bench.loads.embeddings_model import BertShape, write_model

    shape = BertShape(layers=layers, hidden=hidden, heads=2, intermediate=2 * hidden, vocab_size=512)
    return write_model(folder, shape)


class FirstTokenForward:
    """A model's forward on the first token of each row, answered for every position (see the module)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, input_ids: Any, attention_mask: Any, **kwargs: Any) -> dict[str, Any]:
        out = self.module(input_ids=input_ids[:, :1], attention_mask=attention_mask[:, :1], **kwargs)
        width = int(input_ids.shape[1])
        return {"last_hidden_state": out.last_hidden_state.expand(-1, width, -1)}


def agent_process(forward: str, argv: Sequence[str]) -> int:
    """``colo.modelserver.serve``'s ``main(argv)``, its models' forward as ``forward`` says (see the module)."""
    from colo.modelserver import runtime, serve
    from colo.modelserver.loading import LoadedModel, load_model

    if forward == "first-token":
        real = runtime.AgentRuntime

        def first_token_loader(*args: Any, **kwargs: Any) -> LoadedModel:
            loaded = load_model(*args, **kwargs)
            loaded.module = FirstTokenForward(loaded.module)
            return loaded

        def harness_runtime(*args: Any, **kwargs: Any) -> runtime.AgentRuntime:
            return real(*args, **{**kwargs, "loader": first_token_loader})

        runtime.AgentRuntime = harness_runtime  # type: ignore[misc,assignment]  # serve imports it at call time
    return serve.main(list(argv))


def request_bytes(host: str, port: int, path: str, model: str, texts: int, tokens: int) -> bytes:
    """One whole HTTP/1.1 request (head and body) of the bench's embeddings body."""
    from colo.bench.loads.embeddings import EmbeddingsShape

    body = EmbeddingsShape(model=model, rows=texts, seq_len=tokens).body()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Tally:
    """What the clients saw inside the timed window."""

    latencies_secs: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (every answer of the agent has one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"), 0)
    return status, await reader.readexactly(length)


async def client(host: str, port: int, request: bytes, start: float, end: float, tally: Tally) -> None:
    """Send ``request`` back to back over one connection until ``end``; count what ends inside [start, end]."""
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while (sent := time.monotonic()) < end:
            writer.write(request)
            status, body = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_SECS)
            done = time.monotonic()
            if sent < start or done > end:
                continue
            if status == 200:
                tally.latencies_secs.append(done - sent)
            else:
                tally.errors[str(status)] = tally.errors.get(str(status), 0) + 1
                tally.last_error = body[:300].decode(errors="replace")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECS) as response:
        body: bytes = response.read()
    return body


def histogram_mean(text: str, name: str) -> tuple[float, float]:
    """``(sum, count)`` of histogram ``name`` in a ``/metrics`` text (every label set summed)."""
    totals = [0.0, 0.0]
    for i, suffix in enumerate(("_sum", "_count")):
        for found in re.finditer(rf"^{name}{suffix}{{[^}}]*}} (\S+)$", text, re.MULTILINE):
            totals[i] += float(found.group(1))
    return totals[0], totals[1]


def window_means(before: str, after: str) -> dict[str, float]:
    """Mean requests and rows per device batch, and the forwards' seconds, between two ``/metrics`` readings."""
    out: dict[str, float] = {}
    for key, name in (("batch_requests", "colo_agent_batch_requests"), ("batch_rows", "colo_agent_batch_rows")):
        s1, c1 = histogram_mean(after, name)
        s0, c0 = histogram_mean(before, name)
        out[key] = (s1 - s0) / (c1 - c0) if c1 > c0 else 0.0
    f1, _ = histogram_mean(after, "colo_agent_forward_seconds")
    f0, _ = histogram_mean(before, "colo_agent_forward_seconds")
    out["forward_secs"] = f1 - f0
    return out


def measure(
    url: str, model: str, *, clients: int, texts: int, tokens: int, warmup: float, window: float, pid: int | None
) -> dict[str, Any]:
    """Drive the agent at ``url`` and read what it and this process spent (see the module)."""
    from colo.bench import stats
    from colo.gpu.procs import thread_cpu_secs
    from colo.modelserver.metrics import phase_means_ms

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = request_bytes(host, port, parts.path.rstrip("/") + "/v1/embeddings", model, texts, tokens)
    tallies = [Tally() for _ in range(clients)]
    readings: dict[str, Any] = {}

    async def run() -> None:
        start = time.monotonic() + warmup
        end = start + window
        tasks = [asyncio.create_task(client(host, port, request, start, end, t)) for t in tallies]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        readings["metrics0"] = await asyncio.to_thread(get, url + "/metrics")
        readings["threads0"] = thread_cpu_secs(pid) if pid is not None else {}
        readings["cpu0"], readings["wall0"] = time.process_time(), time.monotonic()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        readings["cpu1"], readings["wall1"] = time.process_time(), time.monotonic()
        readings["threads1"] = thread_cpu_secs(pid) if pid is not None else {}
        await asyncio.gather(*tasks)
        readings["metrics1"] = await asyncio.to_thread(get, url + "/metrics")

    runner = _event_loop_runner()
    runner(run())
    wall = readings["wall1"] - readings["wall0"]
    latencies = [s for t in tallies for s in t.latencies_secs]
    lat = stats.summarize_latencies(latencies)
    before, after = readings["metrics0"].decode(), readings["metrics1"].decode()
    batches = window_means(before, after)
    errors: dict[str, int] = {}
    for t in tallies:
        for key, n in t.errors.items():
            errors[key] = errors.get(key, 0) + n
    result: dict[str, Any] = {
        "clients": clients,
        "texts": texts,
        "tokens": tokens,
        "window_secs": round(wall, 3),
        "requests": lat.count,
        "requests_per_sec": stats.rate(lat.count, window),
        "seq_per_sec": stats.rate(lat.count * texts, window),
        "p50_ms": lat.p50_secs * 1000.0,
        "p99_ms": lat.p99_secs * 1000.0,
        "errors": errors,
        "last_error": next((t.last_error for t in tallies if t.last_error), ""),
        "phases_ms": phase_means_ms(after, since=before),
        "batch_requests": batches["batch_requests"],
        "batch_rows": batches["batch_rows"],
        "forward_share": batches["forward_secs"] / wall if wall > 0 else 0.0,
        "load_cpu_share": (readings["cpu1"] - readings["cpu0"]) / wall if wall > 0 else 0.0,
        "cores": os.cpu_count(),
    }
    threads0, threads1 = readings["threads0"], readings["threads1"]
    if pid is not None and threads1:
        spent = {tid: secs - threads0.get(tid, 0.0) for tid, secs in threads1.items()}
        loop_secs = spent.get(pid, 0.0)
        other_secs = sum(spent.values()) - loop_secs
        served = max(1, lat.count)
        result["agent_cpu_ms_per_request"] = (loop_secs + other_secs) / served * 1000.0
        result["loop_cpu_ms_per_request"] = loop_secs / served * 1000.0
        result["loop_cpu_share"] = loop_secs / wall if wall > 0 else 0.0
        result["other_threads_cpu_share"] = other_secs / wall if wall > 0 else 0.0
    return result


def _event_loop_runner() -> Any:
    """``asyncio.run``, on uvloop when installed (the load generator's own cost stays small)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def table(result: dict[str, Any]) -> list[str]:
    """The result as Markdown lines."""
    phases = ", ".join(f"{k} {v:.3f}" for k, v in result["phases_ms"].items())
    lines = [
        f"/v1/embeddings, {result['clients']} clients × {result['texts']} texts of {result['tokens']} tokens, "
        f"{result['window_secs']:.1f} s, on {result.get('device', '?')} ({result['cores']} cores), "
        f"forward: {result.get('forward', '?')}, "
        f"HTTP: {result.get('http') or 'not known'}",
        "",
        "| req/s | seq/s | p50 ms | p99 ms | errors | requests / rows per batch | forward share | agent CPU ms/req "
        "(loop) | loop share | other threads share | load generator share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['requests_per_sec']:.1f} | {result['seq_per_sec']:.1f} | {result['p50_ms']:.2f} "
        f"| {result['p99_ms']:.2f} | {sum(result['errors'].values())} "
        f"| {result['batch_requests']:.2f} / {result['batch_rows']:.1f} | {result['forward_share']:.2f} "
        f"| {result.get('agent_cpu_ms_per_request', float('nan')):.3f} "
        f"({result.get('loop_cpu_ms_per_request', float('nan')):.3f}) "
        f"| {result.get('loop_cpu_share', float('nan')):.2f} | {result.get('other_threads_cpu_share', float('nan')):.2f} "
        f"| {result['load_cpu_share']:.2f} |",
        "",
        f"agent's phases, mean ms per request: {phases}",
    ]
    if result["errors"]:
        lines.append(f"errors: {result['errors']} (last: {result['last_error']})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an agent already running (starts nothing)")
    parser.add_argument("--model", default=MODEL, help=f"the model to ask for (default {MODEL})")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--texts", type=int, default=8, help="texts per request (default 8)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per text (default 128)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load not counted (default 2)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds timed (default 10)")
    parser.add_argument("--layers", type=int, default=6, help="the started agent's model: layers (default 6)")
    parser.add_argument("--hidden", type=int, default=32, help="the started agent's model: width (default 32)")
    parser.add_argument("--torch-threads", type=int, default=1, help="the started agent's OMP_NUM_THREADS (1)")
    parser.add_argument(
        "--forward", choices=FORWARDS, default=FORWARDS[0],
        help="the started agent's forward: on each row's first token (default) or in full (see the module)",
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for the agent")
    parser.add_argument(
        "--src", type=Path, default=ROOT / "src", help="the src/ folder of the colo to start (default: this tree's)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [AGENT_PROCESS]:
        return agent_process(argv[1], argv[2:])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as scripts/bench_embeddings.sh runs both servers
    with tempfile.TemporaryDirectory(prefix="colo-host-path-") as tmp:
        proc = None
        url = args.url
        try:
            if url is None:
                folder = write_host_model(Path(tmp) / "model", args.layers, args.hidden)
                port = free_port()
                proc = start_agent(
                    Path(tmp), MODEL, port, "cpu", "float32", args.serve_arg, args.torch_threads, args.src.resolve(),
                    config_yaml=config_text(folder, port), agent=AGENT,
                    entry=(str(Path(__file__).resolve()), AGENT_PROCESS, args.forward),
                )
                url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, Path(tmp) / "agent.log", START_TIMEOUT_SECS)
            health = json.loads(get(url + "/health"))
            result = measure(
                url, args.model, clients=args.clients, texts=args.texts, tokens=args.tokens, warmup=args.warmup,
                window=args.window, pid=proc.pid if proc is not None else None,
            )
            result["device"] = health.get("device")
            result["forward"] = args.forward if proc is not None else "as served"
            result["http"] = http_of(Path(tmp) / "agent.log") if proc is not None else None
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if proc is not None:
                stop(proc)
    print(json.dumps(result, indent=2) if args.json else "\n".join(table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
