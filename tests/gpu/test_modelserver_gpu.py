"""The built-in agent on a real GPU: two newsroom agents (synthesizer, fact_checker) started as processes on
cuda with ``--worst-case`` (no MPS), checked through /health and /infer, then stopped with SIGTERM.

Prints one line per agent::

    GPU-RESULT agent=<name> load_s=<spawn to /health 200> infer_ms=<server forward ms, first model>
        reserved_mib=<torch reserved now> max_reserved_mib=<peak> limit_mib=<plan's MPS limit> ...

and one ``GPU-RESULT agent=<name> model=<id> ...`` line per model request.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from colo.modelserver.command import builtin_agent_command
from colo.plan import inventory_slots, plan
from colo.spec import load_config

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"
AGENTS = ("synthesizer", "fact_checker")
STARTUP_SECS = 240.0
MIB = 1024 * 1024


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    folder = tmp_path_factory.mktemp("agents")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    for var in [k for k in env if k.startswith("CUDA_MPS_")]:  # no MPS in this test
        del env[var]
    running: dict[str, Running] = {}
    try:
        for name in AGENTS:
            port = _free_port()
            argv = builtin_agent_command(name, NEWSROOM, port, worst_case=True, device="cuda")
            log_path = folder / f"{name}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
            running[name] = Running(name, proc, f"http://127.0.0.1:{port}", log_path, time.monotonic())
        deadline = time.monotonic() + STARTUP_SECS
        pending = set(AGENTS)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                agent = running[name]
                if agent.proc.poll() is not None:
                    pytest.fail(f"{name} exited with {agent.proc.returncode} while starting:\n{agent.log_text()}")
                try:
                    r = httpx.get(f"{agent.url}/health", timeout=5)
                except httpx.TransportError:
                    continue
                if r.status_code == 200:
                    agent.healthy_after_secs = time.monotonic() - agent.spawned
                    agent.health = r.json()
                    pending.discard(name)
            time.sleep(0.5)
        if pending:
            logs = "\n".join(f"--- {n}\n{running[n].log_text()}" for n in sorted(pending))
            pytest.fail(f"not healthy after {STARTUP_SECS:.0f}s: {sorted(pending)}\n{logs}")
        yield running
    finally:
        for agent in running.values():
            _stop(agent)


def _limits() -> dict[str, int]:
    config = load_config(NEWSROOM)
    p = plan(config, inventory_slots(config))
    out: dict[str, int] = {}
    for name in AGENTS:
        placed = p.agent(name)
        assert placed is not None
        out[name] = placed.limit_bytes
    return out


def test_agents_load_on_cuda_within_their_planned_limits(
    agents: dict[str, Running], capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(NEWSROOM)
    limits = _limits()
    for name, agent in agents.items():
        health = agent.health
        assert health is not None
        assert health["status"] == "ready" and health["device"].startswith("cuda"), health
        assert [m["id"] for m in health["models"]] == config.agents[name].models
        assert health["warm_up"].startswith("worst case"), health
        assert health["memory_reserved_bytes"] > 0
        peak = health["max_memory_reserved_bytes"]
        line = (
            f"GPU-RESULT agent={name} load_s={agent.healthy_after_secs:.2f} "
            f"ready_after_s={health['ready_after_secs']:.2f} "
            f"reserved_mib={health['memory_reserved_bytes'] / MIB:.0f} max_reserved_mib={peak / MIB:.0f} "
            f"limit_mib={limits[name] / MIB:.0f} device_name={health['device_name'].replace(' ', '_')} "
            f"weights={'|'.join(m['weights'].split(' ')[0] for m in health['models'])}"
        )
        with capsys.disabled():
            print(line, flush=True)
        # The worst case was run at start-up: PyTorch's peak must sit inside the plan's MPS limit (the CUDA
        # context, ~0.7 GiB on an H100, comes on top; the margin is there for it).
        assert peak < limits[name], line
        assert "device cuda" in agent.log_text()


def test_infer_every_model(agents: dict[str, Running], capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(NEWSROOM)
    for name, agent in agents.items():
        first_ms: float | None = None
        for model_id in config.agents[name].models:
            spec = config.models[model_id]
            body: dict[str, Any] = {"model": model_id, "texts": [f"story {i}: markets rally as rates fall"
                                                                 for i in range(8)]}
            if spec.task in ("generator", "seq2seq"):
                body["max_new_tokens"] = 16
            started = time.monotonic()
            r = httpx.post(f"{agent.url}/infer", json=body, timeout=120)
            client_ms = (time.monotonic() - started) * 1000.0
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["model"] == model_id and out["batch_size"] == 8
            if "generated_ids" in out:
                assert all(1 <= len(row) <= 16 for row in out["generated_ids"]), out
            else:
                assert out["kind"] in ("embeddings", "classification", "token_predictions"), out
            # The worst case over HTTP: a full batch of max_seq_len ids.
            rows = [[1000 + (r * 31 + c) % 5000 for c in range(spec.max_seq_len)] for r in range(spec.batch_size)]
            worst: dict[str, Any] = {"model": model_id, "input_ids": rows}
            if spec.task in ("generator", "seq2seq"):
                worst["max_new_tokens"] = spec.new_tokens
            w = httpx.post(f"{agent.url}/infer", json=worst, timeout=300)
            assert w.status_code == 200, w.text
            infer_ms = out["timing"]["forward_ms"]
            first_ms = infer_ms if first_ms is None else first_ms
            with capsys.disabled():
                print(
                    f"GPU-RESULT agent={name} model={model_id} infer_ms={infer_ms:.1f} client_ms={client_ms:.1f} "
                    f"batch=8 worst_case_ms={w.json()['timing']['forward_ms']:.1f} "
                    f"worst_case_shape={spec.batch_size}x{spec.max_seq_len}",
                    flush=True,
                )
        health = httpx.get(f"{agent.url}/health", timeout=10).json()
        with capsys.disabled():
            print(
                f"GPU-RESULT agent={name} load_s={agent.healthy_after_secs:.2f} infer_ms={first_ms:.1f} "
                f"reserved_mib={health['memory_reserved_bytes'] / MIB:.0f} "
                f"max_reserved_mib={health['max_memory_reserved_bytes'] / MIB:.0f} "
                f"requests={health['requests']} out_of_memory={health['out_of_memory']}",
                flush=True,
            )
        assert health["status"] == "ready" and health["out_of_memory"] == 0


def test_bad_request_is_422_and_sigterm_exits_0(agents: dict[str, Running]) -> None:
    for agent in agents.values():
        r = httpx.post(f"{agent.url}/infer", json={"texts": ["x"] * 33}, timeout=30)
        assert r.status_code == 422, r.text
    for name, agent in agents.items():
        code = _stop(agent)
        assert code == 0, f"{name} exited with {code}:\n{agent.log_text()}"
        assert "stopped" in agent.log_text()


def test_python_is_this_interpreter() -> None:
    assert builtin_agent_command("x", NEWSROOM, 1)[0] == sys.executable


# --- serving within the plan, health that means serving, fast start (issues 12 and 13) ----------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"
LOAD_SECS = 10.0
CLIENTS = 16


def _write_config(folder: Path, model: str, agent: str, port: int, memory: str = "1GiB") -> Path:
    path = folder / "colo.yaml"
    path.write_text(
        "version: 1\n"
        "gpus: [{name: G, memory: 80GiB}]\n"
        f"models:\n  {model}: {{memory: {memory}, batch_size: 32, max_seq_len: 128}}\n"
        f"agents:\n  {agent}: {{models: [{model}], port: {port}}}\n",
        encoding="utf-8",
    )
    return path


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    for var in [k for k in env if k.startswith("CUDA_MPS_")]:
        del env[var]
    return env


def _spawn(config: Path, agent: str, port: int, env: dict[str, str], log_path: Path,
           extra: tuple[str, ...] = ()) -> Running:
    argv = builtin_agent_command(agent, config, port, device="cuda", extra_args=extra)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=config.parent)
    return Running(agent, proc, f"http://127.0.0.1:{port}", log_path, time.monotonic())


def _wait_healthy(agent: Running, timeout: float = STARTUP_SECS, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            pytest.fail(f"{agent.name} exited with {agent.proc.returncode}:\n{agent.log_text()}")
        try:
            r = httpx.get(f"{agent.url}/health", timeout=5)
            if r.status_code == 200:
                agent.healthy_after_secs = time.monotonic() - agent.spawned
                agent.health = r.json()
                return
        except httpx.TransportError:
            pass
        time.sleep(step)
    pytest.fail(f"{agent.name} not healthy after {timeout:.0f}s:\n{agent.log_text()}")


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100.0 * (len(ordered) - 1)))] if ordered else 0.0


def test_batching_16_clients_under_mps_stays_within_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """16 clients send 8 × 128 for 10 s to one all-MiniLM-L6-v2 agent under a real MPS daemon and its planned
    limit: no answer but 200 or 503-with-Retry-After, batches never above batch_size, NVML peak <= limit."""
    import tempfile
    import threading

    import torch

    from colo.gpu.mps.daemon import MpsDaemon
    from colo.gpu.mps.env import client_env
    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.nvml import NvmlBackend

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    nvml = NvmlBackend()
    uuid = nvml.gpus()[0].uuid
    state = Path(tempfile.mkdtemp(prefix="cms", dir="/tmp"))
    root = MpsRoot.under_state_dir(state)
    daemon = MpsDaemon(root.for_gpu(uuid), uuid)
    port = _free_port()
    config = _write_config(tmp_path, MINILM, "memory", port)
    placed = plan(load_config(config), inventory_slots(load_config(config))).agent("memory")
    assert placed is not None
    limit = placed.limit_bytes
    agent: Running | None = None
    try:
        daemon.start()
        env = {**_base_env(), **client_env(placed, root.for_gpu(uuid), gpu_uuid=uuid)}
        agent = _spawn(config, "memory", port, env, tmp_path / "memory.log")
        _wait_healthy(agent)
        rows = [[1000 + (r * 31 + c) % 5000 for c in range(128)] for r in range(8)]
        lones = [httpx.post(f"{agent.url}/infer", json={"input_ids": rows}, timeout=60).json() for _ in range(5)]
        lone = sorted(lones, key=lambda a: a["timing"]["queue_ms"])[2]  # the median of five lone requests
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for p in nvml.processes():
                    if p.pid == agent.proc.pid and p.used_memory_bytes:
                        peak[0] = max(peak[0], p.used_memory_bytes)
                time.sleep(0.05)

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
                    r = c.post(f"{agent.url}/infer", json={"input_ids": rows})
                    with lock:
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 200:
                            latencies.append((time.monotonic() - t0) * 1000.0)
                            merged.append(r.json()["device_batch"]["rows"])
                        elif r.status_code == 503 and "retry-after" not in r.headers:
                            retry_after_missing[0] += 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = time.process_time()
        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_SECS + 120)
        wall = time.monotonic() - started
        load_cpu_pct = 100.0 * (time.process_time() - cpu0) / wall
        time.sleep(0.2)
        stop.set()
        sampler.join(5)
        metrics = httpx.get(f"{agent.url}/metrics", timeout=10).text
        ok = statuses.get(200, 0)
        line = (
            f"GPU-RESULT test=batching model={MINILM} clients={CLIENTS} secs={wall:.1f} "
            f"statuses={dict(sorted(statuses.items()))} seq_per_s={ok * 8 / wall:.0f} "
            f"p50_ms={_percentile(latencies, 50):.1f} p99_ms={_percentile(latencies, 99):.1f} "
            f"max_batch_rows={max(merged, default=0)} mean_batch_rows={sum(merged) / max(1, len(merged)):.1f} "
            f"nvml_peak_mib={peak[0] / MIB:.0f} limit_mib={limit / MIB:.0f} "
            f"lone_queue_ms={lone['timing']['queue_ms']:.2f} lone_total_ms={lone['timing']['total_ms']:.2f} "
            f"loadgen_cpu_pct={load_cpu_pct:.0f}"
        )
        with capsys.disabled():
            print(line, flush=True)
        assert set(statuses) <= {200, 503} and ok > 0, line
        assert retry_after_missing[0] == 0, line
        assert max(merged) <= 32, line
        assert 0 < peak[0] <= limit, line
        assert "colo_agent_batch_rows_bucket" in metrics and "colo_agent_queue_depth" in metrics
        assert "Traceback" not in agent.log_text()
        # The batching wait (2 ms by default) is all a lone request may lose to batching.
        assert lone["timing"]["queue_ms"] <= 2.0 + 5.0, line
    finally:
        if agent is not None:
            _stop(agent)
        with contextlib.suppress(Exception):
            daemon.stop(timeout_secs=10)
        shutil.rmtree(state, ignore_errors=True)


def test_broken_context_turns_health_503_and_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A device-side assert in the agent's own context (the hidden fault route): /health answers 503
    context_lost (or the agent is already gone), the agent logs it once and exits with EXIT_CONTEXT_LOST."""
    import torch

    from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    port = _free_port()
    config = _write_config(tmp_path, BERT_TINY, "solo", port)
    agent = _spawn(config, "solo", port, _base_env(), tmp_path / "solo.log", ("--enable-fault-route",))
    try:
        _wait_healthy(agent)
        injected = time.monotonic()
        r = httpx.post(f"{agent.url}/debug/fault", timeout=30)
        assert r.status_code == 202, r.text
        seen: list[str] = []
        while agent.proc.poll() is None and time.monotonic() - injected < 30:
            try:
                h = httpx.get(f"{agent.url}/health", timeout=5)
                seen.append(f"{h.status_code}:{h.json().get('status')}")
                if h.status_code == 503:
                    detected = time.monotonic() - injected
                    break
            except httpx.TransportError:
                seen.append("gone")
                break
            time.sleep(0.05)
        else:
            detected = time.monotonic() - injected
        code = agent.proc.wait(timeout=30)
        exited = time.monotonic() - injected
        log_text = agent.log_text()
        line = (
            f"GPU-RESULT test=context_lost detect_s={detected:.2f} exit_s={exited:.2f} exit_code={code} "
            f"health_seen={','.join(seen[-3:])} lost_lines={log_text.count('exiting to be restarted')}"
        )
        with capsys.disabled():
            print(line, flush=True)
        assert code == EXIT_CONTEXT_LOST, f"{line}\n{log_text}"
        assert seen and seen[-1] in ("503:context_lost", "gone"), line
        assert log_text.count("exiting to be restarted") == 1, log_text
        assert "Traceback" not in log_text, log_text
    finally:
        _stop(agent)


def test_fast_start_bert_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Spawn to /health 200 of a bert-tiny agent (no MPS), with the agent's own import and load timings."""
    import re

    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    results = []
    for attempt in range(2):  # the second one has a warm page cache, as a restart would
        port = _free_port()
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        config = _write_config(folder, BERT_TINY, "solo", port)
        agent = _spawn(config, "solo", port, _base_env(), folder / "solo.log")
        try:
            _wait_healthy(agent, step=0.02)
            log_text = agent.log_text()
            imports = re.search(r"imports: (.*)", log_text)
            loaded = re.search(r"loaded on \S+ \(.*\) in ([0-9.]+)s", log_text)
            ready = agent.health["ready_after_secs"] if agent.health else None
            results.append(agent.healthy_after_secs or 0.0)
            with capsys.disabled():
                print(
                    f"GPU-RESULT test=fast_start run={attempt} spawn_to_healthy_s={agent.healthy_after_secs:.2f} "
                    f"runtime_ready_s={ready} build_s={loaded.group(1) if loaded else '?'} "
                    f"imports=[{imports.group(1) if imports else '?'}]",
                    flush=True,
                )
        finally:
            assert _stop(agent) == 0
    assert min(results) < 60.0
