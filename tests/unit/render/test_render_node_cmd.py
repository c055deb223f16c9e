"""``colo node``: the supervisor's `colo up --node` code path, with GPU index links and API overrides.

The foreground run and NVML are replaced by recording fakes: what is checked is what `colo node` hands
to the supervisor and what it writes under the state dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from render_configs import mixed
from typer.testing import CliRunner

import colo.cli.up_cmd as up_cmd
import colo.gpu.nvml as nvml
from colo.cli.main import app
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake_run(cfg: Any, config_path: Path, sd: Path, *, use_mps: bool, node: str | None, api: bool) -> None:
        seen.append({"cfg": cfg, "sd": sd, "use_mps": use_mps, "node": node, "api": api})

    monkeypatch.setattr(up_cmd, "up_foreground", fake_run)
    monkeypatch.setattr(nvml, "NvmlBackend", lambda: FakeGpuBackend([fake_gpu(0), fake_gpu(1)]))
    return seen


def test_node_runs_the_up_code_path_with_overrides(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    cfg = mixed(tmp_path / "colo.yaml")
    sd = tmp_path / "state"
    args = ["node", str(cfg), "--node", "node-b", "--state-dir", str(sd), "--host", "0.0.0.0", "--port", "9014"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["node"] == "node-b" and call["use_mps"] and call["api"] and call["sd"] == sd
    assert (call["cfg"].api.host, call["cfg"].api.port) == ("0.0.0.0", 9014)
    link = sd / "mps" / "by-index" / "1"
    assert os.readlink(link) == "../GPU-00000000-0000-0000-0000-000000000001"


def test_node_must_be_in_the_inventory(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["node", str(mixed(tmp_path / "colo.yaml")), "--node", "node-z"])
    assert result.exit_code == 2
    assert "'node-z' is not a node" in result.output and "node-a, node-b" in result.output
    assert calls == []


def test_no_agents_needs_the_orchestrator_mode(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    cfg = str(mixed(tmp_path / "colo.yaml"))
    state = str(tmp_path / "s")
    result = runner.invoke(app, ["node", cfg, "--node", "node-a", "--no-agents", "--state-dir", state])
    assert result.exit_code == 2 and "cannot yet leave the agents" in result.output
    assert calls == []


def test_no_agents_is_passed_when_supported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def fake_run(*_: Any, run_agents: bool = True, **__: Any) -> None:
        seen.append(run_agents)

    monkeypatch.setattr(up_cmd, "up_foreground", fake_run)
    monkeypatch.setattr(nvml, "NvmlBackend", lambda: FakeGpuBackend([fake_gpu(0)]))
    cfg = str(mixed(tmp_path / "colo.yaml"))
    result = runner.invoke(app, ["node", cfg, "--node", "node-a", "--no-agents", "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert seen == [False]


def test_orchestrator_without_agents_keeps_only_the_daemons() -> None:
    """What `colo node --no-agents` runs: the node's MPS daemons are started, no agent is launched."""
    import shutil
    import tempfile

    from colo.clock import FakeClock
    from colo.gpu.mps.fake import FakeMpsControl
    from colo.launch.runner import FakeRunner
    from colo.spec import load_config_text
    from colo.supervise.orchestrator import Orchestrator

    cfg = load_config_text(
        "version: 1\ngpus: auto\nmodels: {small: {memory: 1GiB}}\n"
        "agents:\n  a: {models: [small], command: [bin-a]}\n  b: {models: [small], command: [bin-b], gpu: 1}\n",
        "test.yaml",
    )
    state = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))  # short: MPS pipe dirs hold Unix sockets
    runner_ = FakeRunner()
    mps = FakeMpsControl()
    try:
        orch = Orchestrator(
            cfg,
            state_dir=state,
            gpu_backend=FakeGpuBackend([fake_gpu(0), fake_gpu(1)]),
            mps_control=mps,
            runner=runner_,
            clock=FakeClock(),
            run_agents=False,
        )
        result = orch.up()
        assert result.started == [] and runner_.spawned == []
        assert sorted(result.daemons_started) == [fake_gpu(0).uuid, fake_gpu(1).uuid]
        applied = orch.apply(cfg)
        assert applied.started == [] and runner_.spawned == []
        assert orch.snapshot().plan.agent("b").gpu is not None
        orch.down()
        assert all(not d.alive for d in mps.daemons.values())
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_real_foreground_run_accepts_run_agents() -> None:
    import inspect

    assert "run_agents" in inspect.signature(up_cmd.up_foreground).parameters
