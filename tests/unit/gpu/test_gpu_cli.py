"""``colo gpu info`` / ``colo mps start|status|stop|env`` on CPU: fake NVML backend, fake MPS control."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli import gpu_cmd
from colo.cli.main import app
from colo.errors import GpuError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.info import gpu_info, parse_pinned_limit
from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import ClientProcess
from colo.units import GIB, MIB

runner = CliRunner()
GPU0 = fake_gpu(0, name="NVIDIA GeForce RTX 3090", memory_total_bytes=24 * GIB)
GPU1 = fake_gpu(1, name="NVIDIA GeForce RTX 3090", memory_total_bytes=24 * GIB)


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cgc", dir="/tmp"))
    monkeypatch.setenv("COLO_STATE_DIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, state: Path) -> tuple[FakeGpuBackend, FakeMpsControl]:
    backend = FakeGpuBackend([GPU0, GPU1])
    control = FakeMpsControl()
    monkeypatch.setattr(gpu_cmd, "_backend", lambda: backend)
    monkeypatch.setattr(gpu_cmd, "_control", lambda: control)
    return backend, control


@pytest.fixture
def limited_process() -> Iterator[int]:
    """A real process started with an MPS limit in its environment (stands in for an MPS client)."""
    env = dict(os.environ, CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="0=2048M")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_gpu_info_json_has_the_seed_shape(fakes: tuple[FakeGpuBackend, FakeMpsControl], state: Path) -> None:
    backend, control = fakes
    pipe = MpsRoot.under_state_dir(state).for_gpu(GPU0.uuid)
    control.add_daemon(pipe.pipe_dir, pipe.log_dir, GPU0.uuid)
    control.connect_client(pipe.pipe_dir, 4242)
    backend.set_processes([ClientProcess(4242, 0, GPU0.uuid, 1536 * MIB, True, ("python3", "agent.py"), "python3")])
    result = runner.invoke(app, ["gpu", "info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["mps_enabled"] is True
    assert info["mps"]["enabled"] is True and info["mps"]["control_process"] is True
    assert info["mps"]["pipe_dir"] == str(pipe.pipe_dir)
    assert [g["uuid"] for g in info["gpus"]] == [GPU0.uuid, GPU1.uuid]
    assert info["gpus"][0]["mps"]["healthy"] is True and info["gpus"][1]["mps"]["running"] is False
    assert info["gpus"][0]["mps"]["servers"][0]["client_pids"] == [4242]
    assert info["processes"][0]["is_mps_client"] is True
    assert info["processes"][0]["used_memory_bytes"] == 1536 * MIB
    assert info["gpus"][0]["processes"] == info["processes"]
    assert (info["driver_version"], info["cuda_version"]) == ("580.00.00", "13.0")


def test_gpu_info_table(fakes: tuple[FakeGpuBackend, FakeMpsControl]) -> None:
    result = runner.invoke(app, ["gpu", "info"])
    assert result.exit_code == 0, result.output
    assert "MPS: not running" in result.stdout and GPU1.uuid in result.stdout


def test_gpu_info_without_a_driver_is_one_line_exit_2(fakes: tuple[FakeGpuBackend, FakeMpsControl]) -> None:
    backend, _ = fakes
    backend.error = GpuError("the NVIDIA driver is not loaded", hint="try `nvidia-smi`")
    result = runner.invoke(app, ["gpu", "info"])
    assert result.exit_code == 2
    assert "the NVIDIA driver is not loaded" in result.output
    assert "Traceback" not in result.output


def test_info_limit_comes_from_the_client_environment(state: Path, limited_process: int) -> None:
    backend = FakeGpuBackend(
        [GPU0],
        [ClientProcess(limited_process, 0, GPU0.uuid, 700 * MIB, True), ClientProcess(1, 0, GPU0.uuid, 1, False)],
    )
    info = gpu_info(backend, MpsRoot.under_state_dir(state), FakeMpsControl())
    assert [p["mps_limit_bytes"] for p in info["processes"]] == [2048 * MIB, None]
    assert info["mps_enabled"] is False and info["mps"]["pipe_dir"] is None


def test_parse_pinned_limit() -> None:
    assert parse_pinned_limit("0=2G,1=512M") == 2 * GIB
    assert parse_pinned_limit("0=2G,1=512M", ordinal=1) == 512 * MIB
    assert parse_pinned_limit("1536M") == 1536 * MIB
    assert parse_pinned_limit("") is None
    assert parse_pinned_limit("0=lots") is None


def test_mps_start_like_up_status_and_stop(
    fakes: tuple[FakeGpuBackend, FakeMpsControl], state: Path, newsroom_path: Path, limited_process: int
) -> None:
    backend, control = fakes
    result = runner.invoke(app, ["mps", "start", "--config", str(newsroom_path)])
    assert result.exit_code == 0, result.output
    assert f"gpu0 {GPU0.uuid}: started" in result.stdout
    assert GPU1.uuid not in result.stdout  # the plan places nothing on gpu1
    pipe = MpsRoot.under_state_dir(state).for_gpu(GPU0.uuid).pipe_dir
    daemon = control.daemon_at(pipe)
    assert daemon.visible_devices == GPU0.uuid
    # Started as `colo up` starts it: no server-wide default limit (each client's environment sets its own).
    assert daemon.pinned_mem_limit == {}

    control.connect_client(pipe, limited_process)
    backend.set_processes([ClientProcess(limited_process, 0, GPU0.uuid, 900 * MIB, True)])
    result = runner.invoke(app, ["mps", "status", "--gpu", "0", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["daemons"][0]
    assert row["healthy"] and row["servers"][0]["status"] == "ACTIVE"
    assert row["clients"] == [
        {
            "pid": limited_process,
            "server_pid": row["servers"][0]["pid"],
            "used_memory_bytes": 900 * MIB,
            "limit_bytes": 2048 * MIB,
        }
    ]
    text = runner.invoke(app, ["mps", "status", "--gpu", GPU0.uuid])
    assert "900.0 MiB used of 2.0 GiB limit" in text.stdout

    control.disconnect_client(pipe, limited_process)
    result = runner.invoke(app, ["mps", "stop"])
    assert result.exit_code == 0, result.output
    assert "the daemon quit" in result.stdout
    assert control.find_processes(None) == []


def test_mps_start_adopts_and_notes_foreign_daemons(fakes: tuple[FakeGpuBackend, FakeMpsControl], state: Path) -> None:
    _, control = fakes
    control.add_daemon(state / "nvidia-mps", state / "nvidia-log")
    assert runner.invoke(app, ["mps", "start", "--gpu", "1"]).exit_code == 0
    result = runner.invoke(app, ["mps", "start", "--gpu", "1"])
    assert result.exit_code == 0
    assert "adopted running" in result.stdout
    assert "another MPS control daemon" in result.output


def test_mps_start_without_the_binary(
    monkeypatch: pytest.MonkeyPatch, fakes: tuple[FakeGpuBackend, FakeMpsControl]
) -> None:
    monkeypatch.setattr(gpu_cmd, "_control", lambda: FakeMpsControl(binary_present=False))
    result = runner.invoke(app, ["mps", "start"])
    assert result.exit_code == 2
    assert "nvidia-cuda-mps-control was not found" in result.output


def test_mps_stop_kills_a_daemon_that_does_not_answer(
    fakes: tuple[FakeGpuBackend, FakeMpsControl], state: Path
) -> None:
    _, control = fakes
    assert runner.invoke(app, ["mps", "start", "--gpu", "0"]).exit_code == 0
    pipe = MpsRoot.under_state_dir(state).for_gpu(GPU0.uuid).pipe_dir
    control.hang(pipe)
    result = runner.invoke(app, ["mps", "stop", "--gpu", "0", "--timeout", "1"])
    assert result.exit_code == 0, result.output
    assert "did not answer quit; killed" in result.stdout


def test_mps_stop_without_nvml_uses_the_state_dirs(fakes: tuple[FakeGpuBackend, FakeMpsControl], state: Path) -> None:
    backend, control = fakes
    assert runner.invoke(app, ["mps", "start", "--gpu", "1"]).exit_code == 0
    assert len(control.find_processes(None)) == 1
    backend.error = GpuError("no driver")
    result = runner.invoke(app, ["mps", "stop"])
    assert result.exit_code == 0, result.output
    assert f"{GPU1.uuid}: the daemon quit" in result.stdout
    assert control.find_processes(None) == []


def test_bad_gpu_selector(fakes: tuple[FakeGpuBackend, FakeMpsControl]) -> None:
    result = runner.invoke(app, ["mps", "start", "--gpu", "7"])
    assert result.exit_code == 2
    assert "--gpu '7' matches 0 GPUs" in result.output


def test_mps_env_prints_the_manual_launch_lines(
    fakes: tuple[FakeGpuBackend, FakeMpsControl], state: Path, newsroom_path: Path
) -> None:
    result = runner.invoke(app, ["mps", "env", "critic", "--config", str(newsroom_path)])
    assert result.exit_code == 0, result.output
    pipe = MpsRoot.under_state_dir(state).for_gpu(GPU0.uuid)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# critic: 4.0 GiB MPS limit")
    exports = [ln for ln in lines if ln.startswith("export ")]
    assert exports == [
        f"export CUDA_MPS_PIPE_DIRECTORY={pipe.pipe_dir}",
        f"export CUDA_MPS_LOG_DIRECTORY={pipe.log_dir}",
        f"export CUDA_VISIBLE_DEVICES={GPU0.uuid}",
        "export CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M",
        "export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
        "export CUDA_MPS_CLIENT_PRIORITY=0",
    ]


def test_mps_env_unknown_agent(fakes: tuple[FakeGpuBackend, FakeMpsControl], newsroom_path: Path) -> None:
    result = runner.invoke(app, ["mps", "env", "nobody", "--config", str(newsroom_path)])
    assert result.exit_code == 2
    assert "no agent 'nobody'" in result.output
