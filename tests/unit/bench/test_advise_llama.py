"""``colo advise`` and ``colo capacity`` for the llama.cpp guide: MPS, separate servers or one batching server,
from a ``colo bench servers`` result (recorded against the fake llama-server, and shaped ones)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from colo.bench.advise import advise
from colo.bench.capacity import resolve_requirement
from colo.bench.report import load_json
from colo.bench.results import BenchResult
from colo.memory.db import AgentEntry, ModelDB, Provenance
from colo.memory.worst_case import agent_requests
from colo.plan import inventory_slots, plan
from colo.spec.load import load_config, load_config_text

ROOT = Path(__file__).resolve().parents[3]
RECORDED = ROOT / "tests" / "fixtures" / "bench_llama_servers_fake.json"
GUIDE = ROOT / "examples" / "ollama-guide" / "colo.yaml"
MakeResult = Callable[..., BenchResult]
GIB = 1024**3


def _guide(tmp_path: Path, memory_source: str = "db") -> tuple[object, object]:
    text = GUIDE.read_text().replace("gpus: auto", "gpus: [{name: NVIDIA H200, memory: 141GiB}]")
    text = text.replace("/tmp/colo-llama/state", str(tmp_path / "state")).replace(
        "memory_source: db", f"memory_source: {memory_source}"
    )
    cfg = load_config_text(text, "colo.yaml")
    return cfg, plan(cfg, inventory_slots(cfg))


def test_recorded_result_reads_and_advises_with_reasons(tmp_path: Path) -> None:
    [run] = load_json(RECORDED.read_text())
    assert run.modes() == ["timeslice", "mps", "batching"]
    cfg, p = _guide(tmp_path)
    a = advise(cfg, p, [run])  # type: ignore[arg-type]
    assert a.decision in ("mps", "separate", "batching")
    texts = " ".join([r.text for r in a.reasons] + list(a.notes))
    assert "one server with 3 slots" in texts
    assert any("same runtime" in r.text for r in a.reasons)  # three llama-servers on three ports: one runtime


def _guide_like(make_result: MakeResult, batching_3: float, mps_3: float = 99.4, ts_3: float = 96.0) -> BenchResult:
    run = make_result(
        {
            ("timeslice", 1): 33.3,
            ("timeslice", 3): ts_3,
            ("mps", 1): 33.3,
            ("mps", 3): mps_3,
            ("batching", 1): 33.0,
            ("batching", 3): batching_3,
        },
        title="llama-server 8B",
        unit="tok",
    )
    return dataclasses.replace(run, title="llama-server 8B")


def test_a_batching_server_that_wins_is_recommended_with_its_cost(tmp_path: Path, make_result: MakeResult) -> None:
    cfg, p = _guide(tmp_path)
    a = advise(cfg, p, [_guide_like(make_result, batching_3=140.0)])  # type: ignore[arg-type]
    assert a.decision == "batching" and a.headline() == "Use one batching server (N parallel slots)."
    why = next(r for r in a.reasons if r.points_to == "batching")
    assert "140.0 tok/s aggregate vs 99.4 for 3 separate servers (MPS): 1.41×" in why.text
    assert any("one fault domain" in n or "one crash" in n for n in a.notes)


def test_separate_servers_under_mps_beat_a_slower_batching_server(tmp_path: Path, make_result: MakeResult) -> None:
    cfg, p = _guide(tmp_path)
    a = advise(cfg, p, [_guide_like(make_result, batching_3=80.0, mps_3=110.0, ts_3=96.0)])  # type: ignore[arg-type]
    assert a.decision == "mps"
    assert any("(batching slower)" in r.text and r.points_to == "mps" for r in a.reasons)
    assert any("measured MPS 1.15× time-slicing at N=3" in r.text for r in a.reasons)
    assert json.dumps(a.to_dict())


def test_capacity_uses_the_command_agents_measured_peak(tmp_path: Path) -> None:
    text = GUIDE.read_text().replace("gpus: auto", "gpus: [{name: NVIDIA H200, memory: 141GiB}]")
    path = tmp_path / "colo.yaml"
    path.write_text(text.replace("/tmp/colo-llama/state", str(tmp_path / "state")))
    cfg = load_config(path)
    db = ModelDB.open_default(cfg)
    for name, peak in (("llama1", 5 * GIB), ("llama2", 5 * GIB + 64 * 2**20), ("llama3", 5 * GIB)):
        shapes = tuple(r.shape for r in agent_requests(cfg, name))
        db.put_agent(
            AgentEntry(
                name,
                shapes,
                "measured",
                peak,
                0,
                provenance=Provenance(gpu="NVIDIA H200", date="2026-11-29"),
                command="llama-server",
            )
        )
    db.save()
    requirement, source = resolve_requirement("llama-3.1-8b-q4_k", config=cfg)
    assert requirement == 5 * GIB + 64 * 2**20
    assert source.startswith("measured: agent llama2")
    declared, why = resolve_requirement(
        "llama-3.1-8b-q4_k",
        config=load_config_text(path.read_text().replace("memory_source: db", "memory_source: declared"), "c.yaml"),
    )
    assert declared == 7 * GIB and why == "declared in the config"


H200_RECORDED = ROOT / "tests" / "fixtures" / "bench_llama_servers_h200.json"  # scripts/gpu_llama.sh, lent H200


def test_the_h200_measurement_recommends_one_batching_server(tmp_path: Path) -> None:
    """Measured on the H200 (2026-11-29): 3 slots 521 tok/s, 3 servers under MPS 389, time-sliced 225. The
    MPS / time-slicing ratio only ranks the separate setups, so it is a note and does not outvote batching."""
    [run] = load_json(H200_RECORDED.read_text())
    cfg, p = _guide(tmp_path)
    a = advise(cfg, p, [run])  # type: ignore[arg-type]
    assert a.decision == "batching"
    assert any("1.34×" in r.text and r.points_to == "batching" for r in a.reasons)
    assert any("MPS is 1.73× time-slicing at N=3" in n for n in a.notes)
    assert not any("measured MPS" in r.text for r in a.reasons)


def test_advise_plans_gpus_auto_through_the_planning_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`colo advise` on the example as shipped (gpus: auto) plans on the GPUs NVML sees, like `colo plan`."""
    from typer.testing import CliRunner

    from colo.cli.main import app
    from colo.gpu.nvml import GpuSnapshot
    from colo.supervise import planning

    h200 = GpuSnapshot(0, "GPU-h200", "NVIDIA H200", 141 * GIB, 0, 141 * GIB)
    monkeypatch.setattr(planning, "read_gpus", lambda: [h200])
    config = tmp_path / "colo.yaml"
    config.write_text(GUIDE.read_text().replace("/tmp/colo-llama/state", str(tmp_path / "state")))
    r = CliRunner().invoke(app, ["advise", str(config), "--bench", str(H200_RECORDED), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["decision"] == "batching"
    monkeypatch.setattr(planning, "read_gpus", lambda: None)
    r = CliRunner().invoke(app, ["advise", str(config)])
    assert r.exit_code == 1 and "gpus: auto, but the GPUs cannot be read here" in r.output  # as `colo plan`
