"""The model memory database: keys, provenance, GPU preference, overhead, observations, file handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colo import units
from colo.errors import ConfigError
from colo.memory.db import AgentEntry, ModelDB, ModelEntry, Observation, Provenance

MIB = units.MIB


def entry(
    model: str = "roberta-base",
    *,
    gpu: str = "NVIDIA H100 80GB HBM3",
    date: str = "2026-11-21T18:00:00+00:00",
    nvml: int = 1800 * MIB,
    reserved: int = 1100 * MIB,
    kind: str = "measured",
    batch: int = 32,
) -> ModelEntry:
    return ModelEntry(
        model=model,
        dtype="float32",
        batch_size=batch,
        seq_len=512,
        new_tokens=0,
        kind=kind,  # type: ignore[arg-type]
        nvml_peak_bytes=nvml,
        weights_bytes=475 * MIB,
        context_bytes=500 * MIB,
        allocated_peak_bytes=1000 * MIB,
        reserved_peak_bytes=reserved,
        overhead_bytes=nvml - reserved,
        samples=300,
        sample_hz=180.0,
        provenance=Provenance(gpu=gpu, driver="580.159.04", cuda="13.0", torch="2.11.0", date=date),
    )


def test_roundtrip_through_the_file(tmp_path: Path) -> None:
    db = ModelDB.open(tmp_path / "db.json")
    assert db.models() == []
    db.put(entry())
    db.put_agent(
        AgentEntry(
            agent="critic",
            models=(("a", "float32", 32, 512, 0), ("b", "float32", 32, 512, 0)),
            kind="measured",
            nvml_peak_bytes=2500 * MIB,
            weights_bytes=900 * MIB,
            provenance=Provenance(gpu="H100", date="2026-11-21"),
        )
    )
    db.observe(Observation(agent="critic", peak_bytes=2400 * MIB, limit_bytes=3 * units.GIB, date="2026-11-21"))
    path = db.save()
    raw = json.loads(path.read_text())
    assert raw["version"] == 1 and len(raw["models"]) == 1 and raw["models"][0]["provenance"]["driver"]
    again = ModelDB.open(path)
    assert again.models() == db.models()
    assert again.agents() == db.agents()
    assert raw["observed"][0]["agent"] == "critic" and raw["observed"][0]["peak_bytes"] == 2400 * MIB
    assert json.loads(again.save().read_text())["observed"] == raw["observed"]  # read back and kept


def test_same_key_replaces_other_shapes_and_gpus_add(tmp_path: Path) -> None:
    db = ModelDB(tmp_path / "db.json")
    db.put(entry(nvml=1800 * MIB))
    db.put(entry(nvml=1900 * MIB))
    assert len(db.models()) == 1 and db.models()[0].nvml_peak_bytes == 1900 * MIB
    db.put(entry(batch=8))
    db.put(entry(gpu="NVIDIA A100-SXM4-40GB"))
    db.put(entry(kind="estimated"))
    assert len(db.models()) == 4


def test_lookup_prefers_the_same_gpu_then_the_newest(tmp_path: Path) -> None:
    db = ModelDB(tmp_path / "db.json")
    db.put(entry(gpu="H100", date="2026-01-01", nvml=1000 * MIB))
    db.put(entry(gpu="A100", date="2026-06-01", nvml=2000 * MIB))
    args = dict(dtype="float32", batch_size=32, seq_len=512)
    assert db.lookup("roberta-base", gpu_name="H100", **args).nvml_peak_bytes == 1000 * MIB  # type: ignore[arg-type,union-attr]
    assert db.lookup("roberta-base", **args).nvml_peak_bytes == 2000 * MIB  # type: ignore[arg-type,union-attr]
    assert db.lookup("roberta-base", gpu_name="L4", **args).nvml_peak_bytes == 2000 * MIB  # type: ignore[arg-type,union-attr]
    assert db.lookup("roberta-base", dtype="float16", batch_size=32, seq_len=512) is None
    assert db.lookup("roberta-base", kind="estimated", **args) is None  # type: ignore[arg-type]


def test_overhead_is_the_median_of_measurements_on_that_gpu(tmp_path: Path) -> None:
    db = ModelDB(tmp_path / "db.json")
    assert db.overhead_for("H100") is None
    for i, over in enumerate((670, 680, 700)):
        db.put(entry(model=f"m{i}", gpu="H100", nvml=(1000 + over) * MIB, reserved=1000 * MIB))
    db.put(entry(model="x", gpu="A100", nvml=1500 * MIB, reserved=1000 * MIB))
    db.put(entry(model="e", gpu="H100", kind="estimated", nvml=5000 * MIB, reserved=1000 * MIB))
    value, text = db.overhead_for("H100")  # type: ignore[misc]
    assert value == 680 * MIB and "H100" in text and "3" in text
    assert db.overhead_for(None)[0] == 675 * MIB  # type: ignore[index]  # 500, 670, 680, 700


def test_observations_are_capped_per_agent(tmp_path: Path) -> None:
    db = ModelDB(tmp_path / "db.json")
    for i in range(5):
        db.observe(Observation(agent="a", peak_bytes=i, limit_bytes=None, date=str(i)), keep=3)
    db.observe(Observation(agent="b", peak_bytes=9, limit_bytes=None, date="x"), keep=3)
    observed = json.loads(db.save().read_text())["observed"]
    assert [o["peak_bytes"] for o in observed if o["agent"] == "a"] == [2, 3, 4]
    assert len(observed) == 4


def test_forget(tmp_path: Path) -> None:
    db = ModelDB(tmp_path / "db.json")
    db.put(entry())
    db.put(entry(batch=8))
    assert db.forget("roberta-base") == 2 and db.models() == []


@pytest.mark.parametrize("content", ["{not json", '{"version": 7}', '{"version": 1, "models": [{"model": 1}]}'])
def test_bad_files_are_config_errors_naming_the_file(tmp_path: Path, content: str) -> None:
    p = tmp_path / "db.json"
    p.write_text(content)
    with pytest.raises(ConfigError) as info:
        ModelDB.open(p)
    assert str(p) in str(info.value)
    assert info.value.exit_code == 2


def test_default_path_is_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_STATE_DIR", str(tmp_path))
    assert ModelDB.default_path() == tmp_path / "model_db.json"
    assert ModelDB.open_default().path == tmp_path / "model_db.json"
