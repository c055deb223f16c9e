"""colo capacity (instances that fit) and colo advise (MPS / separate servers / MIG): pure logic."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from colo import units
from colo.bench.advise import advise, mig_capable, mig_fits
from colo.bench.capacity import capacity_for, known_gpu_bytes, resolve_gpu_memory, resolve_requirement
from colo.bench.results import BenchResult
from colo.plan import inventory_slots, plan
from colo.spec.config import Policy
from colo.spec.load import load_config_text

GIB = units.GIB
MakeResult = Callable[..., BenchResult]


def test_capacity_seed_question_on_a_24_gib_gpu() -> None:
    # llama3.1:8b Q4_K_M: ~4.9 GB per instance (the seed's number); colo's default margin 50 %, >= 512 MiB.
    need = units.parse_size("4.9GB")
    a = capacity_for("llama3.1:8b", need, "RTX 3090", 24 * GIB)
    assert a.theoretical == 24 * GIB // need == 5  # the seed's "4-5 models"
    assert a.margin_bytes == -(-need // 2)
    assert a.limit_bytes % (128 * units.MIB) == 0 and a.limit_bytes >= need + a.margin_bytes
    assert a.with_margins == 24 * GIB // a.limit_bytes == 3  # the seed's "2-3 models"
    assert a.practical == 3 and a.limited_by == "memory" and a.client_cap == 48
    assert "practical max: 3 (limited by memory" in "\n".join(a.lines())


def test_capacity_client_cap_and_reserve() -> None:
    pol = Policy(margin="0.1GiB", round_to="128MiB", max_clients_per_gpu=10, reserve_per_gpu="4GiB")
    a = capacity_for("tiny", 256 * units.MIB, "H100", 80 * GIB, policy=pol)
    assert a.with_margins == (76 * GIB) // (384 * units.MIB) == 202
    assert a.practical == 10 and a.limited_by == "client cap"
    assert a.to_dict()["free_after_bytes"] == 76 * GIB - 10 * 384 * units.MIB
    with pytest.raises(ValueError):
        capacity_for("x", 0, "H100", 80 * GIB)


def test_gpu_and_requirement_resolution() -> None:
    assert known_gpu_bytes("NVIDIA H100 80GB HBM3") == 81559 * units.MIB
    assert known_gpu_bytes("NVIDIA GeForce RTX 3090") == 24 * GIB
    assert known_gpu_bytes("A100-40GB") == 40 * GIB and known_gpu_bytes("a100-80gb") == 80 * GIB
    assert known_gpu_bytes("Voodoo 2") is None
    assert resolve_gpu_memory(gpu_memory="80GiB") == ("GPU", 80 * GIB)
    with pytest.raises(ValueError, match="unknown GPU"):
        resolve_gpu_memory(gpu="Voodoo 2")
    with pytest.raises(ValueError, match="which GPU"):
        resolve_gpu_memory()
    assert resolve_requirement("m", memory="1.5GiB") == (3 * GIB // 2, "given (--memory)")
    cfg = load_config_text(NEWSROOM_MINI)
    assert resolve_requirement("roberta-base", config=cfg) == (3 * GIB // 2, "declared in the config")
    assert resolve_gpu_memory(config=cfg) == ("NVIDIA GeForce RTX 3090", 24 * GIB)


NEWSROOM_MINI = """
version: 1
gpus: [{name: NVIDIA GeForce RTX 3090, memory: 24GiB}]
models:
  roberta-base: {memory: 1.5GiB}
  distilgpt2: {memory: 1.5GiB, task: generator}
agents:
  a: {models: [roberta-base]}
  b: {models: [roberta-base]}
  c: {models: [distilgpt2]}
"""


def _plan(text: str):  # type: ignore[no-untyped-def]
    cfg = load_config_text(text)
    return cfg, plan(cfg, inventory_slots(cfg))


def test_advise_follows_the_measurement(make_result: MakeResult) -> None:
    cfg, p = _plan(NEWSROOM_MINI)
    faster = make_result({("timeslice", 1): 100.0, ("timeslice", 4): 150.0, ("mps", 1): 98.0, ("mps", 4): 300.0},
                         sm_pct=30.0)
    a = advise(cfg, p, [faster])
    assert a.decision == "mps"
    texts = [r.text for r in a.reasons]
    assert any("measured MPS 2.00× time-slicing at N=4" in t for t in texts)
    assert any("busy only 30 %" in t for t in texts)
    slower = make_result({("timeslice", 1): 100.0, ("timeslice", 4): 300.0, ("mps", 1): 90.0, ("mps", 4): 240.0},
                         sm_pct=95.0)
    b = advise(cfg, p, [slower])
    assert b.decision == "separate" and b.scores["separate"] == 4
    assert any("0.80× time-slicing at N=4 (slower)" in r.text for r in b.reasons)
    assert b.to_dict()["headline"] == "Use separate servers (time-slicing)."


def test_advise_without_measurement_and_isolation_rules() -> None:
    cfg, p = _plan(NEWSROOM_MINI)
    a = advise(cfg, p)
    assert a.decision == "mps"  # same runtime everywhere, nothing against it
    assert any("run `colo bench`" in n for n in a.notes)
    isolated = NEWSROOM_MINI.replace("a: {models: [roberta-base]}", "a: {models: [roberta-base], priority: high}")
    h100 = isolated.replace("NVIDIA GeForce RTX 3090, memory: 24GiB", "NVIDIA H100 80GB HBM3, memory: 80GiB")
    cfg2, p2 = _plan(h100)
    b = advise(cfg2, p2)
    assert b.decision == "mig" and any("fatal GPU" in r.text for r in b.reasons)
    cfg3, p3 = _plan(isolated)  # an RTX 3090 has no MIG
    c = advise(cfg3, p3)
    assert c.decision == "separate" and c.scores["separate"] >= 2


def test_advise_client_cap_points_to_separate_servers() -> None:
    agents = "\n".join(f"  a{i}: {{models: [roberta-base]}}" for i in range(5))
    text = NEWSROOM_MINI.split("agents:")[0].replace("gpus:", "policy: {max_clients_per_gpu: 4}\ngpus:")
    cfg, p = _plan(text + "agents:\n" + agents + "\n")
    a = advise(cfg, p)
    assert any("exceed the MPS client cap of 4" in r.text for r in a.reasons)
    assert a.decision == "separate"


def test_mig_helpers() -> None:
    assert mig_capable("NVIDIA H100 80GB HBM3") and mig_capable("NVIDIA A100-SXM4-40GB")
    assert not mig_capable("NVIDIA GeForce RTX 4090")
    assert mig_fits([10 * GIB] * 7, 80 * GIB)
    assert not mig_fits([10 * GIB] * 8, 80 * GIB)
    assert not mig_fits([30 * GIB, 30 * GIB, 30 * GIB], 80 * GIB)  # 3 slices each: 9 > 7
