"""``colo advise`` and ``colo capacity`` for the llama.cpp guide: MPS, separate servers or one batching server,
from a ``colo bench servers`` result (recorded against the fake llama-server, and shaped ones)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

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
