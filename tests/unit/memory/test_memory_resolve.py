"""Plan from the database: measured > estimated > declared, agent sets, seed export, ``colo plan --from-db``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo import units
from colo.cli.main import app
from colo.errors import PlanError
from colo.memory.db import AgentEntry, ModelDB, ModelEntry, Provenance
from colo.memory.resolve import agent_memory_for_plan, memory_for_plan, memory_rows
from colo.memory.seed_export import gib_up, model_config_document
from colo.plan import inventory_slots, plan
from colo.spec import load_config_text
from colo.spec.seed_format import ModelConfigFile
from testkit import measured_entry

MIB, GIB = units.MIB, units.GIB

CONFIG = """
version: 1
gpus: [{name: NVIDIA H100 80GB HBM3, memory: 80GiB}]
models:
  google/bert_uncased_L-2_H-128_A-2: {memory: 0.5GiB, batch_size: 32, max_seq_len: 512}
  sentence-transformers/all-MiniLM-L6-v2: {memory: 0.5GiB, batch_size: 32, max_seq_len: 512}
  acme/private-model: {memory: 2GiB, batch_size: 4, max_seq_len: 128}
agents:
  solo: {models: [google/bert_uncased_L-2_H-128_A-2]}
  pair: {models: [google/bert_uncased_L-2_H-128_A-2, sentence-transformers/all-MiniLM-L6-v2]}
  private: {models: [acme/private-model]}
"""
H100 = "NVIDIA H100 80GB HBM3"
TINY = "google/bert_uncased_L-2_H-128_A-2"
MINI = "sentence-transformers/all-MiniLM-L6-v2"


def measured(
    model: str,
    nvml_mib: int,
    *,
    gpu: str = H100,
    weights_mib: int = 17,
    reserved_mib: int = 100,
    kind: str = "measured",
) -> ModelEntry:
    return measured_entry(
        model,
        nvml_mib * MIB,
        gpu=gpu,
        weights_bytes=weights_mib * MIB,
        reserved_peak_bytes=reserved_mib * MIB,
        kind=kind,
    )


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return load_config_text(CONFIG, "colo.yaml")


def test_measured_beats_estimated_beats_declared(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(TINY, 850))
    mem = memory_for_plan(config, db, H100)
    assert mem[TINY].source == "measured" and mem[TINY].requirement_bytes == 850 * MIB
    assert "H100" in mem[TINY].detail
    assert mem[MINI].source == "estimated"  # computed on the spot from the catalog (torch is installed)
    assert 700 * MIB < mem[MINI].requirement_bytes < 2 * GIB
    assert mem["acme/private-model"].source == "declared"  # not in the catalog, not measured
    assert mem["acme/private-model"].requirement_bytes == 2 * GIB


def test_a_saved_estimate_is_used_before_computing_one(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(MINI, 1234, kind="estimated"))
    mem = memory_for_plan(config, db)
    assert mem[MINI].source == "estimated" and mem[MINI].requirement_bytes == 1234 * MIB


def test_estimates_use_the_databases_overhead_for_that_gpu(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    default = memory_for_plan(config, db, H100)[MINI].requirement_bytes
    db.put(measured(TINY, 1100, reserved_mib=100))  # overhead 1000 MiB measured on the H100
    refined = memory_for_plan(config, db, H100)[MINI]
    assert refined.requirement_bytes - default == (1000 - 680) * MIB
    assert "measured on" in refined.detail


def test_rows_show_measured_and_declared_side_by_side(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(TINY, 850))
    rows = {r.model: r for r in memory_rows(config, db, compute_estimates=False)}
    assert rows[TINY].declared_bytes == GIB // 2 and rows[TINY].measured_bytes == 850 * MIB
    assert rows[MINI].estimated_bytes is None and rows[MINI].chosen.source == "declared"  # type: ignore[union-attr]
    assert rows[TINY].to_dict()["source"] == "measured"


def test_plan_uses_measurements(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(TINY, 850))
    p = plan(config, inventory_slots(config), memory_for_plan(config, db))
    solo = p.agent("solo")
    assert solo.requirement_bytes == 850 * MIB
    assert solo.models[0].source == "measured"
    # default policy: 50 %, at least 512 MiB, rounded up to 128 MiB
    assert solo.limit_bytes == units.round_up(850 * MIB + 512 * MIB, 128 * MIB)


def test_a_model_with_no_figure_is_named_by_the_planner(tmp_path: Path) -> None:
    cfg = load_config_text(CONFIG.replace("{memory: 2GiB, batch_size: 4", "{batch_size: 4"), "colo.yaml")
    mem = memory_for_plan(cfg, ModelDB(tmp_path / "db.json"))
    assert "acme/private-model" not in mem
    with pytest.raises(PlanError, match="acme/private-model"):
        plan(cfg, inventory_slots(cfg), mem)


def test_agent_sets_count_one_context(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(TINY, 850, weights_mib=17, reserved_mib=170))
    db.put(measured(MINI, 1050, weights_mib=87, reserved_mib=370))
    agents = agent_memory_for_plan(config, db, H100)
    assert agents["solo"].requirement_bytes == 850 * MIB and agents["solo"].source == "measured"
    # one overhead (680) + both weights (17 + 87) + the larger transient (370 - 87 = 283)
    assert agents["pair"].requirement_bytes == (680 + 17 + 87 + 283) * MIB
    assert agents["pair"].detail == "combined from per-model measurements"
    assert agents["private"].source == "declared"
    shapes = ((TINY, "float32", 32, 512, 0), (MINI, "float32", 32, 512, 0))
    db.put_agent(
        AgentEntry(
            agent="pair",
            models=shapes,
            kind="measured",
            nvml_peak_bytes=1111 * MIB,
            weights_bytes=104 * MIB,
            provenance=Provenance(gpu=H100, date="2026-11-21"),
        )
    )
    assert agent_memory_for_plan(config, db, H100)["pair"].requirement_bytes == 1111 * MIB


def test_agent_set_without_measurements_is_estimated_together(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    per_model = memory_for_plan(config, db)
    pair = agent_memory_for_plan(config, db)["pair"]
    assert pair.source == "estimated"
    assert pair.requirement_bytes < per_model[TINY].requirement_bytes + per_model[MINI].requirement_bytes


def test_seed_export_is_a_valid_model_config(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(TINY, 850))
    doc = model_config_document(config, db, H100)
    parsed = ModelConfigFile.model_validate(doc)
    assert parsed.model_memory_specs[TINY].memory_gb == gib_up(850 * MIB)
    assert doc["model_memory_specs"][TINY]["source"] == "measured"
    assert doc["model_memory_specs"]["acme/private-model"]["source"] == "declared"
    assert doc["agent_model_mappings"]["pair"] == [TINY, MINI]
    assert doc["batch_size_recommendations"]["acme/private-model"] == 4
    assert gib_up(850 * MIB) * GIB >= 850 * MIB


def test_colo_plan_from_db(tmp_path: Path) -> None:
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(CONFIG)
    db = ModelDB(tmp_path / "db.json")
    db.put(measured(TINY, 850))
    db.put(measured(MINI, 1050))
    db.save()
    res = CliRunner().invoke(app, ["plan", str(cfg), "--from-db", "--db", str(db.path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    solo = doc["mps_resource_allocation"]["agent_allocations"]["solo"]
    assert solo["calculated_requirement_gb"] == pytest.approx(850 / 1024, abs=0.002)
