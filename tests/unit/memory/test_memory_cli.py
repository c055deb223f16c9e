"""``colo estimate``, ``colo db show|export`` and ``colo profile``'s refusal without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli.main import app
from colo.spec.seed_format import ModelConfigFile

CONFIG = """
version: 1
gpus: [{name: NVIDIA H100 80GB HBM3, memory: 80GiB}]
models:
  google/bert_uncased_L-2_H-128_A-2: {memory: 0.5GiB, batch_size: 32, max_seq_len: 512}
  distilgpt2: {memory: 1.5GiB, batch_size: 8, max_seq_len: 64, new_tokens: 64}
agents:
  reader: {models: [google/bert_uncased_L-2_H-128_A-2]}
  writer: {models: [google/bert_uncased_L-2_H-128_A-2, distilgpt2]}
"""

runner = CliRunner()


def test_estimate_model_ids_as_json() -> None:
    res = runner.invoke(app, ["estimate", "roberta-base", "distilgpt2", "--batch", "4", "--seq", "128", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["model"]: r for r in json.loads(res.stdout)}
    assert rows["roberta-base"]["label"] == "estimate"
    assert rows["roberta-base"]["batch_size"] == 4 and rows["roberta-base"]["new_tokens"] == 0
    assert rows["distilgpt2"]["task"] == "generator" and rows["distilgpt2"]["new_tokens"] == 64
    assert rows["distilgpt2"]["kv_cache_bytes"] > 0
    assert rows["roberta-base"]["nvml_peak_bytes"] > rows["roberta-base"]["weights_bytes"]


def test_estimate_table_says_estimate() -> None:
    res = runner.invoke(app, ["estimate", "google/bert_uncased_L-2_H-128_A-2"])
    assert res.exit_code == 0, res.output
    assert "estimate" in res.stdout and "680" in res.stdout


def test_estimate_list() -> None:
    res = runner.invoke(app, ["estimate", "--list", "--json"])
    assert res.exit_code == 0
    models = {r["model"] for r in json.loads(res.stdout)}
    assert {"distilgpt2", "google/flan-t5-small", "meta-llama/Llama-3.1-8B"} <= models


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["estimate"]).exit_code == 2
    res = runner.invoke(app, ["estimate", "acme/unknown-model"])
    assert res.exit_code == 2 and "acme/unknown-model" in res.output
    assert runner.invoke(app, ["estimate", "roberta-base", "--dtype", "int4"]).exit_code == 2


def test_estimate_save_then_show_then_export(tmp_path: Path) -> None:
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(CONFIG)
    db = tmp_path / "db.json"
    res = runner.invoke(app, ["estimate", str(cfg), "--save", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    shown = runner.invoke(app, ["db", "show", "--db", str(db), "--json"])
    assert shown.exit_code == 0
    entries = json.loads(shown.stdout)["models"]
    assert {e["kind"] for e in entries} == {"estimated"} and len(entries) == 2
    gpt = next(e for e in entries if e["model"] == "distilgpt2")
    assert (gpt["batch_size"], gpt["seq_len"], gpt["new_tokens"]) == (8, 64, 64)
    assert runner.invoke(app, ["db", "show", "--db", str(db)]).exit_code == 0
    out = tmp_path / "model_config.json"
    exp = runner.invoke(app, ["db", "export", str(cfg), "--db", str(db), "--out", str(out)])
    assert exp.exit_code == 0, exp.output
    doc = json.loads(out.read_text())
    ModelConfigFile.model_validate(doc)
    assert {s["source"] for s in doc["model_memory_specs"].values()} == {"estimated"}
    assert doc["agent_model_mappings"]["writer"] == ["google/bert_uncased_L-2_H-128_A-2", "distilgpt2"]


def test_empty_db_show(tmp_path: Path) -> None:
    res = runner.invoke(app, ["db", "show", "--db", str(tmp_path / "none.json")])
    assert res.exit_code == 0 and "empty" in res.stdout


def test_profile_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    from colo.errors import GpuError
    from colo.gpu.nvml import NvmlBackend

    try:
        NvmlBackend().gpus()
    except GpuError:
        pass
    else:
        pytest.skip("a GPU is present: the refusal cannot be tested here")
    res = runner.invoke(app, ["profile", "roberta-base", "--db", str(tmp_path / "db.json")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


def test_profile_records_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command on CPU: a real child (device cpu), NVML faked by a backend that reports this
    process's children as GPU clients."""
    import psutil

    from colo.gpu import nvml
    from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
    from colo.gpu.nvml import ClientProcess

    class ChildrenBackend(FakeGpuBackend):
        def __init__(self) -> None:
            super().__init__([fake_gpu(name="NVIDIA H100 80GB HBM3")])

        def processes(self) -> list[ClientProcess]:
            uuid = self._gpus[0].uuid
            return [ClientProcess(c.pid, 0, uuid, 700 * 1024**2, True) for c in psutil.Process().children()]

    monkeypatch.setattr(nvml, "NvmlBackend", ChildrenBackend)
    monkeypatch.setenv("COLO_STATE_DIR", str(tmp_path / "state"))
    db = tmp_path / "db.json"
    res = runner.invoke(
        app,
        [
            "profile",
            "google/bert_uncased_L-2_H-128_A-2",
            "--batch",
            "2",
            "--seq",
            "8",
            "--device",
            "cpu",
            "--db",
            str(db),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{") :])
    row = doc["results"][0]
    assert row["ok"] and row["nvml_peak_bytes"] == 700 * 1024**2
    assert "random weights" in row["weights"]
    saved = json.loads(db.read_text())["models"][0]
    assert (saved["batch_size"], saved["seq_len"], saved["kind"]) == (2, 8, "measured")
    assert saved["provenance"]["gpu"] == "NVIDIA H100 80GB HBM3"
    bad = runner.invoke(app, ["profile", "roberta-base", "--gpu", "3", "--device", "cpu", "--db", str(db)])
    assert bad.exit_code == 2 and "--gpu 3" in bad.output


def test_children_join_colos_mps_daemon_when_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from colo.cli.memory_cmd import _mps_env

    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    uuid = "GPU-00000000-0000-0000-0000-000000000000"
    assert _mps_env(uuid, str(tmp_path), None) == {}
    pipe = tmp_path / "mps" / uuid / "pipe"
    pipe.mkdir(parents=True)
    (pipe / "control").touch()
    env = _mps_env(uuid, str(tmp_path), None)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe)
    assert _mps_env(uuid, str(tmp_path), "/x/pipe") == {"CUDA_MPS_PIPE_DIRECTORY": "/x/pipe"}
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/inherited")
    assert _mps_env(uuid, str(tmp_path), None) == {}  # inherited as is
