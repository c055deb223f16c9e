"""The built-in agent on a real GPU.

On the shared newsroom (the session fixture ``newsroom``: real MPS, the sized plan's limits):

- synthesizer and fact_checker answer an 8-text request and the worst case (batch_size × max_seq_len, all new
  tokens) of every model through HTTP; PyTorch's peak stays inside the plan's limit; a batch past
  ``batch_size`` is a 422;
- 16 clients against the ``memory`` agent (all-MiniLM-L6-v2) for a few seconds: only 200 or 503 with
  Retry-After, batches never above batch_size, the NVML peak of its pid within its MPS limit, a lone request
  not held back by batching.

Alone (no MPS; two bert-tiny agents spawned at once): the ``--worst-case`` warm-up, a device-side assert in the
agent's own context (/health 503 ``context_lost``, exit code 4), SIGTERM exits 0. Start-up figures (spawn to
/health, the import breakdown) are printed, not asserted: the launcher's timings are
``tests/gpu/test_launcher_gpu.py``'s.

Prints ``GPU-RESULT agent=...`` / ``GPU-RESULT test=...`` lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from newsroom import Newsroom

from colo.modelserver.command import builtin_agent_command
from colo.spec import load_config
from testkit import free_port, wait_for

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
NEWSROOM_AGENTS = ("synthesizer", "fact_checker")
STARTUP_SECS = 240.0
MIB = 1024 * 1024
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"
LOAD_SECS = 4.0
CLIENTS = 16


# --- on the newsroom -------------------------------------------------------------------------------------


def test_newsroom_agents_answer_every_model_at_its_worst_case(newsroom: Newsroom) -> None:
    config = load_config(newsroom.config)
    records = newsroom.agents()
    for name in NEWSROOM_AGENTS:
        url = f"http://127.0.0.1:{newsroom.ports[name]}"
        for model_id in config.agents[name].models:
            spec = config.models[model_id]
            body: dict[str, Any] = {"model": model_id, "texts": [f"story {i}: markets rally" for i in range(8)]}
            if spec.task in ("generator", "seq2seq"):
                body["max_new_tokens"] = 16
            r = httpx.post(f"{url}/infer", json=body, timeout=120)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["model"] == model_id and out["batch_size"] == 8
            if "generated_ids" in out:
                assert all(1 <= len(row) <= 16 for row in out["generated_ids"]), out
            else:
                assert out["kind"] in ("embeddings", "classification", "token_predictions"), out
            rows = [[1000 + (r * 31 + c) % 5000 for c in range(spec.max_seq_len)] for r in range(spec.batch_size)]
            worst: dict[str, Any] = {"model": model_id, "input_ids": rows}
            if spec.task in ("generator", "seq2seq"):
                worst["max_new_tokens"] = spec.new_tokens
            w = httpx.post(f"{url}/infer", json=worst, timeout=300)
            assert w.status_code == 200, w.text
            print(
                f"GPU-RESULT agent={name} model={model_id} infer_ms={out['timing']['forward_ms']:.1f} "
                f"worst_case_ms={w.json()['timing']['forward_ms']:.1f} worst_case_shape={spec.batch_size}x{spec.max_seq_len}",
                flush=True,
            )
        health = httpx.get(f"{url}/health", timeout=10).json()
        limit = int(records[name]["limit_bytes"])
        peak = int(health["max_memory_reserved_bytes"])
        print(
            f"GPU-RESULT agent={name} max_reserved_mib={peak / MIB:.0f} limit_mib={limit / MIB:.0f} "
            f"requests={health['requests']} out_of_memory={health['out_of_memory']}",
            flush=True,
        )
        assert health["status"] == "ready" and health["device"].startswith("cuda"), health
        assert health["out_of_memory"] == 0, health
        # PyTorch's peak at the worst case sits inside the MPS limit (the CUDA context comes on top: the margin)
        assert peak < limit, (name, peak, limit)
        r = httpx.post(f"{url}/infer", json={"texts": ["x"] * 33}, timeout=30)
        assert r.status_code == 422, r.text


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100.0 * (len(ordered) - 1)))] if ordered else 0.0


def test_newsroom_batching_16_clients_stays_within_the_limit(newsroom: Newsroom) -> None:
    """16 clients send 8 × 128 for a few seconds to the ``memory`` agent (all-MiniLM-L6-v2) under MPS and its
    planned limit: no answer but 200 or 503-with-Retry-After, batches never above batch_size, NVML peak <= limit."""
    from colo.gpu.nvml import NvmlBackend

    nvml = NvmlBackend()
    agent = newsroom.agents()["memory"]
    pid, limit = int(agent["pid"]), int(agent["limit_bytes"])
    url = f"http://127.0.0.1:{newsroom.ports['memory']}"
    rows = [[1000 + (r * 31 + c) % 5000 for c in range(128)] for r in range(8)]
    lones = [httpx.post(f"{url}/infer", json={"input_ids": rows}, timeout=60).json() for _ in range(5)]
    lone = sorted(lones, key=lambda a: a["timing"]["queue_ms"])[2]  # the median of five lone requests
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in nvml.processes():
                if p.pid == pid and p.used_memory_bytes:
                    peak[0] = max(peak[0], p.used_memory_bytes)
            stop.wait(0.05)

    statuses: dict[int, int] = {}
    latencies: list[float] = []
    merged: list[int] = []
    retry_after_missing = [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            end = time.monotonic() + LOAD_SECS
            while time.monotonic() < end:
                t0 = time.monotonic()
                r = c.post(f"{url}/infer", json={"input_ids": rows})
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        latencies.append((time.monotonic() - t0) * 1000.0)
                        merged.append(r.json()["device_batch"]["rows"])
                    elif r.status_code == 503 and "retry-after" not in r.headers:
                        retry_after_missing[0] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_SECS + 120)
    wall = time.monotonic() - started
    stop.set()
    sampler.join(5)
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    ok = statuses.get(200, 0)
    line = (
        f"GPU-RESULT test=batching agent=memory clients={CLIENTS} secs={wall:.1f} "
        f"statuses={dict(sorted(statuses.items()))} seq_per_s={ok * 8 / wall:.0f} "
        f"p50_ms={_percentile(latencies, 50):.1f} p99_ms={_percentile(latencies, 99):.1f} "
        f"max_batch_rows={max(merged, default=0)} mean_batch_rows={sum(merged) / max(1, len(merged)):.1f} "
        f"nvml_peak_mib={peak[0] / MIB:.0f} limit_mib={limit / MIB:.0f} "
        f"lone_queue_ms={lone['timing']['queue_ms']:.2f} lone_total_ms={lone['timing']['total_ms']:.2f}"
    )
    print(line, flush=True)
    assert set(statuses) <= {200, 503} and ok > 0, line
    assert retry_after_missing[0] == 0, line
    assert max(merged) <= 32, line
    assert 0 < peak[0] <= limit, line
    assert "colo_agent_batch_rows_bucket" in metrics and "colo_agent_queue_depth" in metrics
    log = (newsroom.state_dir / "logs" / "memory.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    # The batching wait (2 ms by default) is all a lone request may lose to batching.
    assert lone["timing"]["queue_ms"] <= 2.0 + 5.0, line


# --- alone, without MPS: two bert-tiny agents spawned at once -------------------------------------------------


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    spawned: float
    healthy_after_secs: float | None = None
    health: dict[str, Any] | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def _stop(agent: Running) -> int | None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            return agent.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait(timeout=30)
            return None
    return agent.proc.returncode


def _spawn(folder: Path, name: str, extra: tuple[str, ...], *, worst_case: bool) -> Running:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "colo.yaml"
    config.write_text(
        "version: 1\ngpus: [{name: G, memory: 80GiB}]\n"
        f"models:\n  {BERT_TINY}: {{memory: 1GiB, batch_size: 32, max_seq_len: 128}}\n"
        f"agents:\n  {name}: {{models: [{BERT_TINY}], port: {port}}}\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    for var in [k for k in env if k.startswith("CUDA_MPS_")]:  # no MPS here
        del env[var]
    argv = builtin_agent_command(name, config, port, device="cuda", worst_case=worst_case, extra_args=extra)
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    return Running(name, proc, f"http://127.0.0.1:{port}", log_path, time.monotonic())


def _healthy(agent: Running) -> bool:
    if agent.proc.poll() is not None:
        raise AssertionError(f"{agent.name} exited with {agent.proc.returncode}:\n{agent.log_text()}")
    try:
        r = httpx.get(f"{agent.url}/health", timeout=5)
    except httpx.TransportError:
        return False
    if r.status_code == 200 and agent.health is None:
        agent.healthy_after_secs = time.monotonic() - agent.spawned
        agent.health = r.json()
    return r.status_code == 200


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    """"faulty" (``--worst-case --enable-fault-route``) and "plain", spawned at once on cuda, healthy."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    folder = tmp_path_factory.mktemp("agents")
    running = {
        "faulty": _spawn(folder / "faulty", "faulty", ("--enable-fault-route",), worst_case=True),
        "plain": _spawn(folder / "plain", "plain", (), worst_case=False),
    }
    try:
        up = wait_for(lambda: all(_healthy(a) for a in running.values()), timeout=STARTUP_SECS, step=0.05)
        if not up:
            logs = "\n".join(f"--- {n}\n{a.log_text()}" for n, a in running.items())
            pytest.fail(f"not healthy after {STARTUP_SECS:.0f}s:\n{logs}")
        for a in running.values():
            imports = re.search(r"imports: (.*)", a.log_text())
            print(
                f"GPU-RESULT test=start agent={a.name} spawn_to_healthy_s={a.healthy_after_secs:.2f} "
                f"imports=[{imports.group(1) if imports else '?'}]",
                flush=True,
            )
        yield running
    finally:
        for a in running.values():
            _stop(a)


def test_worst_case_warm_up_on_cuda_and_bad_request_422(alone: dict[str, Running]) -> None:
    agent = alone["faulty"]
    health = agent.health
    assert health is not None
    assert health["status"] == "ready" and health["device"].startswith("cuda"), health
    assert health["warm_up"].startswith("worst case"), health
    assert health["max_memory_reserved_bytes"] > 0
    assert "device cuda" in agent.log_text()
    r = httpx.post(f"{agent.url}/infer", json={"texts": ["x"] * 33}, timeout=30)
    assert r.status_code == 422, r.text


def test_sigterm_exits_0(alone: dict[str, Running]) -> None:
    agent = alone["plain"]
    assert httpx.post(f"{agent.url}/infer", json={"texts": ["a lone request"]}, timeout=30).status_code == 200
    code = _stop(agent)
    assert code == 0, f"exited with {code}:\n{agent.log_text()}"
    assert "stopped" in agent.log_text()


def test_broken_context_turns_health_503_and_exits_4(alone: dict[str, Running]) -> None:
    """A device-side assert in the agent's own context (the hidden fault route): /health answers 503
    context_lost (or the agent is already gone), the agent logs it once and exits with EXIT_CONTEXT_LOST."""
    from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST

    agent = alone["faulty"]
    injected = time.monotonic()
    r = httpx.post(f"{agent.url}/debug/fault", timeout=30)
    assert r.status_code == 202, r.text
    seen: list[str] = []

    def lost() -> bool:
        if agent.proc.poll() is not None:
            seen.append("gone")
            return True
        try:
            h = httpx.get(f"{agent.url}/health", timeout=5)
        except httpx.TransportError:
            seen.append("gone")
            return True
        seen.append(f"{h.status_code}:{h.json().get('status')}")
        return h.status_code == 503

    wait_for(lost, timeout=30, step=0.05)
    detected = time.monotonic() - injected
    code = agent.proc.wait(timeout=30)
    exited = time.monotonic() - injected
    log_text = agent.log_text()
    print(
        f"GPU-RESULT test=context_lost detect_s={detected:.2f} exit_s={exited:.2f} exit_code={code} "
        f"health_seen={','.join(seen[-3:])} lost_lines={log_text.count('exiting to be restarted')}",
        flush=True,
    )
    assert code == EXIT_CONTEXT_LOST, log_text
    assert seen and seen[-1] in ("503:context_lost", "gone"), seen
    assert log_text.count("exiting to be restarted") == 1, log_text
    assert "Traceback" not in log_text, log_text


def test_python_is_this_interpreter() -> None:
    assert builtin_agent_command("x", ROOT / "examples" / "newsroom" / "colo.yaml", 1)[0] == sys.executable
