"""colo bench / capacity / advise through the CLI (typer's CliRunner on colo.cli.main.app)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.bench.report import to_json
from colo.bench.results import BenchResult
from colo.cli.main import app
from colo.errors import GpuError

runner = CliRunner()
NEWSROOM = Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.yaml"
MakeResult = Callable[..., BenchResult]


@pytest.fixture()
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML says there is no driver, whatever this machine has."""

    class NoGpu:
        def gpus(self) -> list[object]:
            raise GpuError("no NVIDIA driver library (libnvidia-ml.so) was found")

    monkeypatch.setattr("colo.gpu.nvml.NvmlBackend", NoGpu)


def test_capacity_json_and_text() -> None:
    r = runner.invoke(app, ["capacity", "llama3.1:8b", "--memory", "4.9GB", "--gpu", "RTX 3090", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert (data["theoretical"], data["with_margins"], data["practical"]) == (5, 3, 3)
    r = runner.invoke(app, ["capacity", "roberta-base", "--config", str(NEWSROOM)])
    assert r.exit_code == 0 and "declared in the config" in r.output and "practical max: 10" in r.output


def test_capacity_usage_errors() -> None:
    r = runner.invoke(app, ["capacity", "m", "--memory", "4.9GB"])
    assert r.exit_code == 2 and "which GPU" in r.output
    r = runner.invoke(app, ["capacity", "m", "--memory", "lots", "--gpu", "H100"])
    assert r.exit_code == 2


def test_advise_with_and_without_a_bench_file(make_result: MakeResult, tmp_path: Path) -> None:
    r = runner.invoke(app, ["advise", str(NEWSROOM)])
    assert r.exit_code == 0 and r.output.startswith("Use MPS.") and "colo bench" in r.output
    result = make_result({("timeslice", 1): 100.0, ("timeslice", 8): 200.0, ("mps", 1): 100.0, ("mps", 8): 160.0},
                         sm_pct=90.0)
    bench = tmp_path / "bench.json"
    bench.write_text(to_json([result]))
    r = runner.invoke(app, ["advise", str(NEWSROOM), "--bench", str(bench), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["decision"] == "separate" and data["scores"]["separate"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    r = runner.invoke(app, ["advise", str(NEWSROOM), "--bench", str(bad)])
    assert r.exit_code == 2 and "not a colo bench result" in r.output


def test_bench_cmd_end_to_end(tmp_path: Path, no_gpu: None) -> None:
    cmd = f"{sys.executable} -c \"print('throughput 5.5 tok/s')\""
    out = tmp_path / "out"
    r = runner.invoke(app, ["bench", "cmd", "--cmd", cmd, "--mode", "timeslice", "-n", "2", "--duration", "0.2",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    rows = {(row["mode"], row["concurrency"]): row for row in data["runs"][0]["summary"]}
    assert rows[("timeslice", 1)]["aggregate_per_sec"] == pytest.approx(5.5)
    assert rows[("timeslice", 2)]["aggregate_per_sec"] == pytest.approx(11.0)
    assert rows[("timeslice", 2)]["scaling_efficiency"] == pytest.approx(1.0)
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert "| time-slicing | 2 | 5.5 | 11.0 | 100 % |" in (out / "bench.md").read_text()


def test_bench_usage_errors(tmp_path: Path, no_gpu: None) -> None:
    r = runner.invoke(app, ["bench", "cmd", "--cmd", "true", "-n", "0,a", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--concurrency" in r.output
    r = runner.invoke(app, ["bench", "cmd", "--cmd", "true", "--mode", "fast", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown mode 'fast'" in r.output
    r = runner.invoke(app, ["bench", "encoder", "--model", "roberta-base", "--mode", "mps", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "libnvidia-ml" in r.output
    r = runner.invoke(app, ["bench", "decode", "--shape", "llama-9000", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "llama-3.1-8b" in r.output
    r = runner.invoke(app, ["bench", "http", "--api", "grpc", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "ollama-chat" in r.output


def test_bench_forwards_runs_every_agent_of_a_config(tmp_path: Path, no_gpu: None) -> None:
    config = tmp_path / "colo.yaml"
    config.write_text(
        "version: 1\n"
        "models:\n  google/bert_uncased_L-2_H-128_A-2: {memory: 0.5GiB}\n"
        "  sentence-transformers/all-MiniLM-L6-v2: {memory: 0.5GiB}\n"
        "agents:\n"
        "  analyst: {models: [google/bert_uncased_L-2_H-128_A-2]}\n"
        "  balancer: {models: [google/bert_uncased_L-2_H-128_A-2, sentence-transformers/all-MiniLM-L6-v2]}\n"
    )
    out = tmp_path / "out"
    r = runner.invoke(app, ["bench", "forwards", str(config), "--mode", "timeslice", "--batch", "1", "--seq", "8",
                            "--duration", "0.3", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    point = json.loads(r.stdout)["runs"][0]["points"][0]
    assert point["mode"] == "timeslice" and point["concurrency"] == 2
    labels = {i["label"]: i for i in point["instances"]}
    assert set(labels) == {"analyst", "balancer"}
    assert labels["balancer"]["info"]["models"] == [
        "google/bert_uncased_L-2_H-128_A-2", "sentence-transformers/all-MiniLM-L6-v2"
    ]
    assert "| analyst |" in (out / "bench.md").read_text()


def test_per_instance_mps_limits() -> None:
    from colo.bench.options import parse_limits
    from colo.bench.run import BenchPlan, specs_for_mode
    from colo.bench.spec import InstanceSpec
    from colo.errors import UsageError

    limits = parse_limits("25,75", "2GiB")
    assert [(lim.active_thread_pct, lim.pinned_mem_limit_bytes) for lim in limits] == [(25, 2 << 30), (75, 2 << 30)]
    plan = BenchPlan("x", base=InstanceSpec("cpu"), concurrencies=(3,), limits=limits)
    mps = specs_for_mode(plan, "mps")
    assert [s.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] for s in mps] == ["25", "75", "25"]
    assert all(s.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M" for s in mps)
    assert all(not s.env for s in specs_for_mode(plan, "timeslice"))  # limits are MPS's only
    assert parse_limits(None, None)[0].env() == {}
    with pytest.raises(UsageError):
        parse_limits("0", None)
    with pytest.raises(UsageError):
        parse_limits("half", None)
    with pytest.raises(UsageError):
        parse_limits(None, "lots")
