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
