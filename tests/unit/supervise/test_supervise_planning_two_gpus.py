"""Two newsrooms on two GPUs (issue 23), planned on CPU: the real pipeline (``plan_run``, what ``colo up``
takes) with two fake 80 GiB GPUs, ``explain_plan`` (``colo render explain``), and ``colo plan --gpu 2x80GiB``.
The config is ``newsroom_doc.two_newsrooms`` of the sized newsroom, the one the GPU test
(``tests/gpu/test_two_gpus_gpu.py``) brings up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from colo.cli.main import app
from colo.gpu.fake_nvml import fake_gpu
from colo.plan.explain import explain_plan
from colo.spec import load_config
from colo.supervise.planning import NodePlan, plan_run
from newsroom_doc import two_newsrooms

ROOT = Path(__file__).resolve().parents[3]
SIZED = ROOT / "examples" / "newsroom" / "colo.sized.yaml"
GPUS = [fake_gpu(0), fake_gpu(1)]  # two NVIDIA H100 80GB HBM3


def sized() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SIZED.read_text())
    return doc


def written(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "two-newsrooms.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def planned(tmp_path: Path, doc: dict[str, Any]) -> NodePlan:
    return plan_run(load_config(written(tmp_path, doc)), GPUS, state_dir=tmp_path / "state")


def test_two_newsrooms_are_the_nine_agents_and_their_copies_100_ports_up_on_auto_gpus_spread() -> None:
    doc = sized()
    two = two_newsrooms(doc)
    names = list(doc["agents"])
    assert list(two["agents"]) == names + [f"{n}_b" for n in names]
    for n in names:
        port = doc["agents"][n]["port"] + 100
        assert two["agents"][f"{n}_b"]["port"] == port
        assert two["agents"][f"{n}_b"]["health"]["url"] == f"http://127.0.0.1:{port}/health"
        assert two["agents"][f"{n}_b"]["models"] == doc["agents"][n]["models"]
    assert two["gpus"] == "auto" and two["policy"]["placement"] == "spread"
    assert two["policy"]["margin"] == doc["policy"]["margin"] and two["models"] == doc["models"]
    assert doc["agents"]["analyst"]["port"] == 9101 and "analyst_b" not in doc["agents"]  # the source is left alone
    with pytest.raises(ValueError, match="already an agent"):
        two_newsrooms(two, suffix="")  # analyst's copy would be analyst
    with pytest.raises(ValueError, match="port 9102"):
        two_newsrooms(doc, port_offset=1)  # analyst's copy would take balancer's port


def test_plan_run_places_all_eighteen_on_both_gpus_within_memory_one_newsroom_per_gpu(tmp_path: Path) -> None:
    node = planned(tmp_path, two_newsrooms(sized()))
    mine, missing = node.local()
    assert missing == [] and len(mine) == 18
    by_gpu: dict[str, list[str]] = {}
    for ap in mine:
        assert ap.gpu is not None and ap.gpu.uuid is not None
        by_gpu.setdefault(ap.gpu.uuid, []).append(ap.name)
    assert sorted(by_gpu) == [g.uuid for g in GPUS]
    # spread: each agent's twin has its limit and comes next in placement order, so the newsrooms split whole
    assert sorted(by_gpu[GPUS[0].uuid]) == sorted(sized()["agents"])
    assert sorted(by_gpu[GPUS[1].uuid]) == sorted(f"{n}_b" for n in sized()["agents"])
    for summary in node.plan.gpus:
        assert summary.allocated_bytes <= summary.gpu.memory_total_bytes
        assert summary.allocated_bytes == sum(ap.limit_bytes for ap in mine if ap.gpu == summary.gpu)
        assert summary.mps  # 9 agents each: policy.mps auto runs MPS on both
    assert node.mps_gpu_uuids() == [g.uuid for g in GPUS]  # colo up starts one MPS control daemon per GPU
    config = load_config(written(tmp_path, two_newsrooms(sized())))
    ports = [a.port for a in config.agents.values()]
    assert len(set(ports)) == 18 and None not in ports


def test_binpack_would_put_both_newsrooms_on_gpu_0_which_is_why_the_builder_spreads(tmp_path: Path) -> None:
    doc = two_newsrooms(sized())
    doc["policy"]["placement"] = "binpack"
    node = planned(tmp_path, doc)
    assert {ap.gpu.uuid for ap in node.plan.agents if ap.gpu is not None} == {GPUS[0].uuid}
    assert len(node.plan.placed) == 18 and node.mps_gpu_uuids() == [GPUS[0].uuid]


def test_the_explanation_names_both_gpus_and_the_spread_rule(tmp_path: Path) -> None:
    node = planned(tmp_path, two_newsrooms(sized()))
    lines = explain_plan(node.plan)
    assert lines[0].startswith("placement: spread") and "most free room (spread)" in lines[0]
    placed = [ln for ln in lines if " -> gpu" in ln]
    assert len(placed) == 18
    assert sum(" -> gpu0:" in ln for ln in placed) == 9 and sum(" -> gpu1:" in ln for ln in placed) == 9
    assert any(ln.startswith("  1. fact_checker ") and " -> gpu0:" in ln for ln in lines)
    assert any(ln.startswith("  2. fact_checker_b ") and " -> gpu1:" in ln for ln in lines)
    assert "node local: 18 agents on 2 of 2 GPUs, 73.5 GiB of 160.0 GiB allocated" in lines


def test_colo_plan_with_two_80gib_gpus_puts_nine_agents_on_each(tmp_path: Path) -> None:
    path = written(tmp_path, two_newsrooms(sized()))
    r = CliRunner().invoke(app, ["plan", str(path), "--gpu", "2x80GiB", "--json", "--state-dir", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    gpus = json.loads(r.stdout)["colo"]["gpus"]
    assert [len(g["agents"]) for g in gpus] == [9, 9]
    assert all(g["allocated_gb"] <= 80 for g in gpus)
