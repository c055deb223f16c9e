"""`colo plan`, `colo validate`, `colo schema` through the CLI: output, files, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FIXTURES, NEWSROOM, ROOT
from typer.testing import CliRunner

from colo.cli.main import app

runner = CliRunner()


def test_plan_table_and_file(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "mps_allocation_config.json"
    r = runner.invoke(app, ["plan", str(NEWSROOM), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "calculated 16.50 GiB + margin 6.50 GiB = allocated 23.00 GiB" in r.output
    assert "efficiency 71.7%" in r.output and "95.8%" in r.output
    doc = json.loads(out.read_text())
    assert doc["mps_resource_allocation"]["system_summary"]["total_mps_allocation_gb"] == 23.0
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_plan_json_is_the_allocation_document() -> None:
    r = runner.invoke(app, ["plan", str(NEWSROOM), "--json"])
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert set(doc["mps_resource_allocation"]) == {"agent_allocations", "system_summary"}
    assert doc["mps_resource_allocation"]["agent_allocations"]["critic"]["models"] == [
        "unitary/unbiased-toxic-roberta", "unitary/toxic-bert"]


def test_plan_does_not_fit_exit_1() -> None:
    r = runner.invoke(app, ["plan", str(NEWSROOM), "--gpu", "12GiB"])
    assert r.exit_code == 1
    r2 = runner.invoke(app, ["plan", str(NEWSROOM), "--gpu", "12GiB", "--allow-partial"])
    assert r2.exit_code == 0 and "left out" in r2.output


def test_plan_multi_gpu_option() -> None:
    r = runner.invoke(app, ["plan", str(NEWSROOM), "--gpu", "2x12GiB", "--json"])
    assert r.exit_code == 0
    gpus = json.loads(r.stdout)["colo"]["gpus"]
    assert len(gpus) == 2 and all(g["allocated_gb"] <= 12 for g in gpus)


def test_plan_bad_gpu_option_exit_2() -> None:
    r = runner.invoke(app, ["plan", str(NEWSROOM), "--gpu", "lots"])
    assert r.exit_code == 2


def test_plan_from_seed_model_config(tmp_path: Path) -> None:
    mc = tmp_path / "model_config.json"
    mc.write_text(json.dumps({
        "model_memory_specs": {"a/m": {"memory_gb": 1.0}, "b/m": {"memory_gb": 0.5}},
        "agent_model_mappings": {"x": ["a/m", "b/m"], "y": ["b/m"]},
        "batch_size_recommendations": {"a/m": 16},
    }))
    r = runner.invoke(app, ["plan", str(mc), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["mps_resource_allocation"]["agent_allocations"]
    assert rows["x"]["calculated_requirement_gb"] == 1.5 and rows["x"]["mps_memory_limit_gb"] == 2.25


def test_validate_seed_summary_fixture_reports_mismatch() -> None:
    r = runner.invoke(app, ["validate", str(FIXTURES / "seed_mps_allocation_config.json"), "--json"])
    assert r.exit_code == 1
    findings = json.loads(r.stdout)["files"][0]["findings"]
    errors = {f["where"].rsplit(".", 1)[-1]: f["message"] for f in findings if f["severity"] == "error"}
    assert "says 16 GB but the agent rows add up to 16.5 GB" in errors["total_calculated_memory_gb"]
    assert "says 7 GB but the agent rows add up to 6.5 GB" in errors["total_safety_margin_gb"]
    assert "71.7%" in errors["memory_efficiency_percent"]
    warnings = [f for f in findings if f["severity"] == "warning"]
    assert any("critic" in f["where"] and "14%" in f["message"] for f in warnings)


def test_validate_written_plan_has_no_errors(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    assert runner.invoke(app, ["plan", str(NEWSROOM), "--out", str(out)]).exit_code == 0
    r = runner.invoke(app, ["validate", str(out), "--json"])
    findings = json.loads(r.stdout)["files"][0]["findings"]
    assert findings and all(f["severity"] == "warning" for f in findings)


def test_validate_clean_exit_0(tmp_path: Path) -> None:
    clean = tmp_path / "colo.yaml"
    clean.write_text("gpus: [{memory: 8GiB}]\nmodels: {m: {memory: 1GiB}}\nagents: {a: {models: [m]}}\n")
    r = runner.invoke(app, ["validate", str(clean)])
    assert r.exit_code == 0 and "ok" in r.output


def test_validate_limits_over_gpu_and_below_requirement(tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "seed_mps_allocation_config.json").read_text())
    rows = doc["mps_resource_allocation"]["agent_allocations"]
    rows["critic"]["mps_memory_limit_gb"] = 3.0
    doc["mps_resource_allocation"]["system_summary"]["gpu_memory_gb"] = 16.0
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    r = runner.invoke(app, ["validate", str(f), "--json"])
    msgs = " ".join(x["message"] for x in json.loads(r.stdout)["files"][0]["findings"])
    assert "below the requirement" in msgs and "over the GPU's 16 GB" in msgs


def test_validate_unreadable_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r2 = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert r2.exit_code == 2


def test_plan_bad_config_exit_2_one_paragraph(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("gpus: [{memory: 8GiB}]\nmodels: {m: {memory: 1GiB}}\nagents: {a: {models: [n]}}\n")
    r = runner.invoke(app, ["plan", str(bad)])
    assert r.exit_code == 2
    assert isinstance(r.exception, SystemExit) or r.exception is None or "unknown model" in str(r.exception)


def test_schema_matches_committed_docs() -> None:
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "colo.yaml" and "agents" in schema["properties"]
    committed = json.loads((ROOT / "docs" / "colo.schema.json").read_text())
    assert committed == schema, "docs/colo.schema.json is stale: run `make schema`"
