"""The pure planner: the newsroom reproduces the seed's rows; properties hold for random inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colo import units
from colo.errors import ConfigError, DoesNotFitError, PlanError
from colo.plan import GpuSlot, inventory_slots, plan, require_complete
from colo.plan.allocation_doc import allocation_document
from colo.spec import ColoConfig, load_config

SEED_ROWS = {  # agent: (calculated, limit, margin) in the seed's GB (= GiB)
    "analyst": (0.5, 1.0, 0.5), "balancer": (0.5, 1.0, 0.5), "chief_editor": (1.0, 2.0, 1.0),
    "critic": (3.5, 4.0, 0.5), "fact_checker": (4.0, 5.0, 1.0), "memory": (0.5, 1.0, 0.5),
    "newsreader": (0.5, 1.0, 0.5), "scout": (3.0, 4.0, 1.0), "synthesizer": (3.0, 4.0, 1.0),
}


def test_newsroom_reproduces_seed_rows(newsroom_path: Path) -> None:
    c = load_config(newsroom_path)
    p = plan(c, inventory_slots(c))
    doc = allocation_document(p)["mps_resource_allocation"]
    for name, (calc, limit, margin) in SEED_ROWS.items():
        row = doc["agent_allocations"][name]
        assert (row["calculated_requirement_gb"], row["mps_memory_limit_gb"], row["safety_margin_gb"]) == (
            calc, limit, margin), name
        assert row["priority"] == "medium"
        assert row["colo"]["mps_pinned_device_mem_limit"] == f"{int(limit * 1024)}M"
    s = doc["system_summary"]
    assert (s["total_calculated_memory_gb"], s["total_safety_margin_gb"], s["total_mps_allocation_gb"]) == (
        16.5, 6.5, 23.0)
    assert s["memory_efficiency_percent"] == 71.7 and s["gpu_utilization_percent"] == 95.8
    assert s["total_agents"] == 9 and s["gpu_memory_gb"] == 24.0
    assert {f.agent for f in p.findings} == {"critic", "fact_checker", "scout", "synthesizer"}


def cfg(agents: dict[str, Any], gpus: list[dict[str, Any]], **policy: Any) -> ColoConfig:
    models = {f"m{i}": {"memory": f"{i}GiB"} for i in range(1, 9)}
    return ColoConfig.model_validate(
        {"gpus": gpus, "models": models, "agents": agents, "policy": {"margin": "0MiB", **policy}}
    )


def test_does_not_fit_names_agent_and_largest_free() -> None:
    c = cfg({"big": {"models": ["m4"]}, "small": {"models": ["m3"]}},
            [{"memory": "4GiB"}, {"memory": "3.5GiB"}])
    p = plan(c, inventory_slots(c))
    # big (4 GiB) takes gpu0 exactly; small (3 GiB) fits gpu1.
    assert p.complete
    c2 = cfg({"big": {"models": ["m4"]}, "critic": {"models": ["m4"]}},
             [{"memory": "4GiB"}, {"memory": "3.2GiB"}])
    p2 = plan(c2, inventory_slots(c2))
    assert [u.agent for u in p2.unplaced] == ["critic"]
    assert p2.unplaced[0].reason == "critic needs 4.0 GiB; largest free: 3.2 GiB on gpu1"
    with pytest.raises(DoesNotFitError, match="critic needs 4.0 GiB"):
        require_complete(p2)


def test_priority_leaves_low_out() -> None:
    c = cfg({"lo": {"models": ["m3"], "priority": "low"}, "hi": {"models": ["m3"], "priority": "high"}},
            [{"memory": "4GiB"}])
    p = plan(c, inventory_slots(c))
    assert [a.name for a in p.placed] == ["hi"] and p.unplaced[0].agent == "lo"
    assert p.agent("lo").client_priority == 1 and p.agent("lo").active_thread_pct == 50


def test_binpack_vs_spread() -> None:
    agents = {f"a{i}": {"models": ["m1"]} for i in range(4)}
    gpus = [{"memory": "8GiB", "count": 2}]
    bp = plan(cfg(agents, gpus), inventory_slots(cfg(agents, gpus)))
    assert {a.gpu.index for a in bp.placed if a.gpu} == {0}
    sp_cfg = cfg(agents, gpus, placement="spread")
    sp = plan(sp_cfg, inventory_slots(sp_cfg))
    assert sorted(len(g.agents) for g in sp.gpus) == [2, 2]


def test_client_cap() -> None:
    c = cfg({f"a{i}": {"models": ["m1"]} for i in range(3)}, [{"memory": "80GiB"}], max_clients_per_gpu=2)
    p = plan(c, inventory_slots(c))
    assert len(p.placed) == 2 and "2 MPS clients" in p.unplaced[0].reason


def test_pinning() -> None:
    c = cfg({"a": {"models": ["m1"], "gpu": "local:1"}, "b": {"models": ["m1"], "gpu": "x:0", "node": "x"}},
            [{"memory": "8GiB", "count": 2}, {"node": "x", "memory": "8GiB"}])
    p = plan(c, inventory_slots(c))
    assert p.agent("a").gpu == GpuSlot("local", 1, "GPU", 8 * units.GIB)
    assert p.agent("b").gpu is not None and p.agent("b").gpu.node == "x"
    bad = cfg({"a": {"models": ["m1"], "gpu": 7}}, [{"memory": "8GiB"}])
    with pytest.raises(ConfigError, match="matches no GPU"):
        plan(bad, inventory_slots(bad))


def test_rounding_and_margin_policy() -> None:
    c = ColoConfig.model_validate({
        "gpus": [{"memory": "8GiB"}], "models": {"m": {"memory": "1000MiB"}},
        "agents": {"a": {"models": ["m"]}}, "policy": {"margin": "50%, at least 512MiB", "round_to": "128MiB"}})
    a = plan(c, inventory_slots(c)).agent("a")
    assert a.limit_bytes == 1536 * units.MIB  # 1000 + 512 = 1512 -> 1536
    assert a.margin_bytes == 536 * units.MIB


def test_missing_memory_is_a_plan_error() -> None:
    c = ColoConfig.model_validate({"gpus": [{"memory": "8GiB"}], "models": {"m": {}}, "agents": {"a": {"models": ["m"]}}})
    with pytest.raises(PlanError, match="no memory requirement"):
        plan(c, inventory_slots(c))


def test_oversubscription_allowed() -> None:
    c = cfg({"a": {"models": ["m8"]}}, [{"memory": "4GiB"}], allow_oversubscription=True)
    p = plan(c, inventory_slots(c))
    assert p.complete and any("oversubscription" in f.message for f in p.findings)


agent_st = st.fixed_dictionaries({
    "models": st.lists(st.sampled_from([f"m{i}" for i in range(1, 9)]), min_size=1, max_size=3, unique=True),
    "priority": st.sampled_from(["high", "medium", "low"]),
})


@settings(max_examples=60, deadline=None)
@given(
    agents=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), agent_st, min_size=1, max_size=25),
    gpu_mem=st.lists(st.integers(min_value=1, max_value=48), min_size=1, max_size=6),
    placement=st.sampled_from(["binpack", "spread"]),
    cap=st.integers(min_value=1, max_value=8),
)
def test_plan_properties(agents: dict[str, Any], gpu_mem: list[int], placement: str, cap: int) -> None:
    c = cfg(agents, [{"memory": f"{m}GiB"} for m in gpu_mem], placement=placement, max_clients_per_gpu=cap)
    slots = inventory_slots(c)
    p = plan(c, slots)
    assert p == plan(c, slots)  # deterministic
    for g in p.gpus:
        assert g.allocated_bytes <= g.gpu.memory_total_bytes  # no GPU over capacity
        assert len(g.agents) <= cap
    for a in p.agents:
        assert a.limit_bytes >= a.requirement_bytes
        assert a.requirement_bytes == sum(m.requirement_bytes for m in a.models)
    assert len(p.placed) + len(p.unplaced) == len(agents)
    # A left-out agent really fits nowhere it could go.
    for u in p.unplaced:
        assert all(g.free_bytes < u.limit_bytes or len(g.agents) >= cap for g in p.gpus)


def test_whole_agent_requirement_replaces_the_sum() -> None:
    from colo.plan import MemoryInputs, ModelMemory

    c = cfg({"pair": {"models": ["m1", "m2"]}, "solo": {"models": ["m1"]}}, [{"memory": "16GiB"}])
    models = {m: ModelMemory(m, units.GIB * int(m[1:]), "measured") for m in ("m1", "m2")}
    together = ModelMemory("pair", 2 * units.GIB, "measured", "model set measured together")
    p = plan(c, inventory_slots(c), MemoryInputs(models, {"pair": together}))
    assert p.agent("pair").requirement_bytes == 2 * units.GIB  # not 1 + 2 GiB: one CUDA context, not two
    assert "measured together" in p.agent("pair").requirement_source
    assert p.agent("solo").requirement_bytes == units.GIB and p.agent("solo").requirement_source == "sum of the models"
