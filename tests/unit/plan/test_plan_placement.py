"""colo.plan.placement and colo.plan.inventory: which GPU each agent goes on, and what a pin means."""

from __future__ import annotations

import pytest

from colo.errors import ConfigError, PlanError
from colo.plan.inventory import inventory_slots, pinned_candidates
from colo.plan.placement import Request, place, placement_order
from colo.spec.load import load_config_text

GIB = 1 << 30


def test_order_is_priority_then_size_then_name() -> None:
    reqs = [Request("b", "low", 4 * GIB, None), Request("a", "high", 1 * GIB, None), Request("c", "low", 4 * GIB, None)]
    assert [r.name for r in placement_order(reqs)] == ["a", "b", "c"]


def test_binpack_fills_the_tightest_gpu_spread_the_emptiest() -> None:
    reqs = [Request("big", "medium", 6 * GIB, None), Request("small", "medium", 2 * GIB, None)]
    packed = place(reqs, [8 * GIB, 10 * GIB], ["gpu0", "gpu1"])
    assert packed.placed == {"big": 0, "small": 0}  # best fit: gpu0's last 2 GiB
    spread = place(reqs, [8 * GIB, 10 * GIB], ["gpu0", "gpu1"], strategy="spread")
    assert spread.placed == {"big": 1, "small": 0}


def test_refusals_say_why_and_oversubscription_is_recorded() -> None:
    reqs = [Request("a", "high", 5 * GIB, None), Request("b", "low", 5 * GIB, None)]
    out = place(reqs, [6 * GIB], ["gpu0"])
    assert out.placed == {"a": 0} and out.refused["b"] == "b needs 5.0 GiB; largest free: 1.0 GiB on gpu0"
    over = place(reqs, [6 * GIB], ["gpu0"], allow_oversubscription=True)
    assert over.placed == {"a": 0, "b": 0} and over.oversubscribed == ("b",)
    capped = place(reqs, [100 * GIB], ["gpu0"], max_clients=1)
    assert "already has 1 MPS clients" in capped.refused["b"]
    pinned = place([Request("p", "medium", 1 * GIB, (1,))], [8 * GIB, 8 * GIB], ["gpu0", "gpu1"])
    assert pinned.placed == {"p": 1}


CONFIG = """\
version: 1
gpus:
  - {name: A, memory: 24GiB, count: 2}
  - {name: B, memory: 80GiB, node: node-b}
models: {m: {memory: 1GiB}}
agents:
  free: {models: [m]}
  second: {models: [m], gpu: "local:1"}
  on_b: {models: [m], node: node-b}
  ambiguous: {models: [m], gpu: 0}
  nowhere: {models: [m], gpu: 7}
"""


def test_inventory_slots_and_pins() -> None:
    cfg = load_config_text(CONFIG)
    slots = inventory_slots(cfg)
    assert [s.key for s in slots] == ["local:0", "local:1", "node-b:0"]
    assert pinned_candidates("free", cfg.agents["free"], slots) is None
    assert pinned_candidates("second", cfg.agents["second"], slots) == [1]
    assert pinned_candidates("on_b", cfg.agents["on_b"], slots) == [2]
    with pytest.raises(ConfigError, match="ambiguous across nodes"):
        pinned_candidates("ambiguous", cfg.agents["ambiguous"], slots)
    with pytest.raises(ConfigError, match="matches no GPU") as info:
        pinned_candidates("nowhere", cfg.agents["nowhere"], slots[:2])
    assert info.value.field == "agents.nowhere.gpu"
    with pytest.raises(PlanError, match="gpus: auto needs the real GPUs"):
        inventory_slots(load_config_text("version: 1\ngpus: auto\nmodels: {m: {memory: 1GiB}}\nagents: {a: {models: [m]}}"))
