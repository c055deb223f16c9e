"""`colo tune` on two GPUs (issue 23, item 4): proposals per agent under the GPU colo runs it on (the store's
record, which an apply keeps even where a fresh plan would differ), and per GPU its allocation now and as
proposed and what the memory freed buys — in the table and in --json. CPU only: an inventory of two GPUs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli.main import app
from colo.spec import load_config
from colo.supervise import planning
from colo.supervise.snapshots import AgentStatus, Shape, UsageSample
from colo.supervise.state import AgentState
from colo.supervise.store import AgentRecord, Store
from colo.units import GIB, MIB
from testkit import two_encoder_config_yaml

runner = CliRunner()
CFG = two_encoder_config_yaml().replace("gpus: [{memory: 10GiB}]", "gpus: [{memory: 10GiB, count: 2}]")
SMALL = (Shape("google/bert_uncased_L-2_H-128_A-2", 32, 512, 0),)
BIG = (Shape("roberta-base", 32, 512, 0),)
#: where colo runs them (the store): big on GPU 1, where a fresh binpack plan would not put it
RAN_ON = {"small": "local:0", "big": "local:1"}


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(CFG)
    sd = tmp_path / "state"
    store = Store(sd / "colo.db")
    now = time.time()
    for i, (name, gpu) in enumerate(RAN_ON.items()):
        status = AgentStatus(name, AgentState.RUNNING, 700 + i, gpu, f"GPU-{i}", GIB, GIB, "medium", 0)
        store.save_agent(AgentRecord(status))
    rows = [
        UsageSample(name, now - 300 + 10 * i, now - 290 + 10 * i, peak, limit, 5, RAN_ON[name], shapes, 0, 4)
        for i in range(20)
        for name, peak, limit, shapes in (
            ("small", 700 * MIB, int(1.5 * GIB), SMALL),
            ("big", 1800 * MIB, int(3 * GIB), BIG),
        )
    ]
    store.add_usage(rows, keep_after=0.0, max_rows=1000)
    store.close()
    return cfg, sd


def test_a_fresh_plan_would_put_both_on_gpu_0(world: tuple[Path, Path]) -> None:
    cfg, sd = world
    fresh = planning.plan_config(load_config(cfg), state_dir=sd)
    assert {ap.name: ap.gpu.label for ap in fresh.plan.placed if ap.gpu is not None} == {"small": "gpu0", "big": "gpu0"}


def test_tune_proposes_per_gpu_where_the_agents_run(world: tuple[Path, Path]) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    by = {a["agent"]: a for a in out["agents"]}
    assert {n: a["gpu"] for n, a in by.items()} == {"small": "gpu0", "big": "gpu1"}
    assert by["small"]["trusted"] and by["big"]["trusted"]
    gpus = {g["gpu"]: g for g in out["gpus"]}
    assert sorted(gpus) == ["gpu0", "gpu1"]
    for name, label in (("small", "gpu0"), ("big", "gpu1")):
        g = gpus[label]
        assert g["agents"] == [name]
        assert g["before_bytes"] == by[name]["current_bytes"] and g["after_bytes"] == by[name]["proposed_bytes"]
        assert g["freed_bytes"] == g["before_bytes"] - g["after_bytes"] > 0
    assert sum(g["before_bytes"] for g in gpus.values()) == out["total_before_bytes"]
    assert sum(g["after_bytes"] for g in gpus.values()) == out["total_after_bytes"]
    table = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd)])
    assert table.exit_code == 0, table.output
    g1 = gpus["gpu1"]
    line = f"gpu1 (1 agent): {g1['before_bytes'] / GIB:.2f} GiB now → {g1['after_bytes'] / GIB:.2f} GiB proposed; "
    assert line + g1["text"] in table.output
    assert "gpu0 (1 agent): 1.50 GiB now" in table.output
