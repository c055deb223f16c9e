"""The built-in agent on a real GPU: two newsroom agents (synthesizer, fact_checker) started as processes on
cuda with ``--worst-case`` (no MPS), checked through /health and /infer, then stopped with SIGTERM.

Prints one line per agent::

    GPU-RESULT agent=<name> load_s=<spawn to /health 200> infer_ms=<server forward ms, first model>
        reserved_mib=<torch reserved now> max_reserved_mib=<peak> limit_mib=<plan's MPS limit> ...

and one ``GPU-RESULT agent=<name> model=<id> ...`` line per model request.
"""

from __future__ import annotations

import os
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
