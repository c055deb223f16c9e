"""``colo profile`` of a command agent on CPU: a fake llama-server (a tiny HTTP server) and a fake NVML
backend that reports the agent's process as a GPU client; the peak lands in the model database and sizes
the agent's limit (``--from-db``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from colo.cli.main import app
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.nvml import ClientProcess
from colo.memory.db import ModelDB
from colo.memory.resolve import agent_memory_for_plan
from colo.profiling.command import (
    CommandRunOptions,
    command_agents,
    models_only_in_command_agents,
    profile_command_agent,
)
from colo.spec.load import load_config
from testkit import FAKE_LLAMA_SERVER as FAKE_SERVER
from testkit import free_port

GIB = 1024**3


class TreeBackend(FakeGpuBackend):
    """NVML as it would look with the agent on the GPU: every descendant of this test process holds 3 GiB
    (the fake server's own process: a child spawned in its own session)."""

    def __init__(self) -> None:
        super().__init__([fake_gpu(name="NVIDIA H200")])

    def processes(self) -> list[ClientProcess]:
        uuid = self._gpus[0].uuid
        return [ClientProcess(pid, 0, uuid, 3 * GIB, True) for pid in _fake_servers()]


def _fake_servers() -> list[int]:
    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            if "fake_llama_server" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE:
                out.append(c.pid)
        except psutil.Error:
            pass
    return out


def _config(tmp_path: Path, port: int, *, command: list[str] | None = None) -> Path:
    argv = command or [sys.executable, str(FAKE_SERVER), "-m", "m.gguf", "--port", str(port), "-np", "1", "-ngl", "99"]
    doc = {
        "version": 1,
        "gpus": [{"name": "NVIDIA H200", "memory": "141GiB"}],
        "state_dir": str(tmp_path / "state"),
        "models": {
            "llama3.1-8b-q4_k": {"path": "m.gguf", "task": "generator", "memory": "6GiB", "max_seq_len": 4096},
            "distilbert-base-uncased": {"memory": "1GiB"},
        },
        "agents": {
            "llama1": {
                "models": ["llama3.1-8b-q4_k"],
                "command": argv,
                "port": port,
                "health": {"type": "http", "url": f"http://127.0.0.1:{port}/health", "startup_timeout_secs": 20},
                "restart": {"stop_wait_secs": 3},
                "profile": {
                    "path": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "ignore_eos": True},
                    "concurrency": 2,
                    "requests": 4,
                },
            },
            "encoder": {"models": ["distilbert-base-uncased"]},
        },
    }
    path = tmp_path / "colo.yaml"
    path.write_text(json.dumps(doc))
    return path


def test_command_agent_is_started_loaded_sampled_stopped_and_recorded(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, free_port()))
    agents = command_agents(config)
    assert list(agents) == ["llama1"]
    assert models_only_in_command_agents(config) == {"llama3.1-8b-q4_k"}
    db = ModelDB(tmp_path / "db.json")
    backend = TreeBackend()
    result = profile_command_agent(
        agents["llama1"], db, backend, log_dir=tmp_path / "logs", options=CommandRunOptions(poll_secs=0.05)
    )
    assert result.ok, result.error
    entry = result.agent_entry
    assert entry is not None and entry.nvml_peak_bytes == 3 * GIB and entry.samples > 0
    assert entry.provenance.gpu == "NVIDIA H200" and not entry.provenance.mps
    assert "fake_llama_server.py" in entry.command and "POST /v1/chat/completions" in entry.command
    # stopped: no fake server left behind
    assert not _fake_servers()
    # --from-db: the agent's measured peak is its requirement
    found = agent_memory_for_plan(config, db, "NVIDIA H200")["llama1"]
    assert found.requirement_bytes == 3 * GIB and found.source == "measured"


def test_a_command_that_dies_is_a_failed_row_with_its_log(tmp_path: Path) -> None:
    port = free_port()
    config = load_config(
        _config(tmp_path, port, command=[sys.executable, "-c", "print('no GPU here'); raise SystemExit(3)"])
    )
    agent = command_agents(config)["llama1"]
    result = profile_command_agent(
        agent,
        ModelDB(tmp_path / "db.json"),
        TreeBackend(),
        log_dir=tmp_path / "logs",
        options=CommandRunOptions(poll_secs=0.05),
    )
    assert not result.ok
    assert "exit code 3" in result.error and "no GPU here" in result.error


def test_colo_profile_measures_command_agents_and_skips_their_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colo.gpu import nvml
    from colo.profiling import profiler

    ran: list[str] = []

    def fake_run_job(self: object, job: profiler.Job, *, repeats: int = 1) -> profiler.JobResult:
        ran.append(job.label)  # colo's own child is not what this test is about
        return profiler.JobResult(job, None, error="not run in this test")

    monkeypatch.setattr(nvml, "NvmlBackend", TreeBackend)
    monkeypatch.setattr(profiler.Profiler, "run_job", fake_run_job)
    path = _config(tmp_path, free_port())
    db = tmp_path / "db.json"
    res = CliRunner().invoke(app, ["profile", str(path), "--db", str(db), "--json"])
    assert ran == ["distilbert-base-uncased"]  # the GGUF model is not handed to colo's torch child
    doc = json.loads(res.stdout[res.stdout.index("{") :])
    row = next(r for r in doc["results"] if r["agent"] == "llama1")
    assert row["ok"] and row["nvml_peak_bytes"] == 3 * GIB and row["weights"] == "its own command"
    saved = json.loads(db.read_text())["agents"][0]
    assert saved["agent"] == "llama1" and saved["nvml_peak_bytes"] == 3 * GIB and saved["command"]
    assert res.exit_code == 1  # the stubbed encoder job failed: reported, not hidden
    plan = CliRunner().invoke(app, ["plan", str(path), "--from-db", "--db", str(db), "--json"])
    assert plan.exit_code == 0, plan.output
    limits = json.loads(plan.stdout)["mps_resource_allocation"]["agent_allocations"]
    assert limits["llama1"]["mps_memory_limit_gb"] == 4.5  # 3 GiB measured + 50 % margin (declared: 6 GiB)


def test_profile_block_is_validated() -> None:
    from pydantic import ValidationError

    from colo.spec.config import AgentSpec

    with pytest.raises(ValidationError, match="agents with a 'command'"):
        AgentSpec.model_validate({"models": ["m"], "port": 1, "profile": {}})
    with pytest.raises(ValidationError, match="needs the agent's 'port'"):
        AgentSpec.model_validate({"models": ["m"], "command": ["x"], "profile": {}})
    with pytest.raises(ValidationError, match="not both"):
        AgentSpec.model_validate(
            {"models": ["m"], "command": ["x"], "port": 1, "profile": {"requests": 2, "duration_secs": 1}}
        )
    with pytest.raises(ValidationError, match="request path"):
        AgentSpec.model_validate({"models": ["m"], "command": ["x"], "port": 1, "profile": {"path": "v1"}})
