"""colo.plan.mps: which GPUs run MPS under policy.mps, and how an agent's limit is then enforced."""

from __future__ import annotations

from colo.plan.mps import LONE_AGENT_COST, decide, enforcement


def test_auto_runs_mps_only_where_agents_share_a_gpu() -> None:
    assert decide("auto", 2) == (True, "2 agents — MPS on (auto): agents share the GPU under their MPS limits")
    assert decide("auto", 1) == (False, f"1 agent — MPS off (auto): {LONE_AGENT_COST}")
    assert decide("auto", 0) == (False, "no agent — no MPS daemon")


def test_on_off_and_a_forced_off_run() -> None:
    assert decide("on", 1) == (True, "1 agent — MPS on (on)")
    assert decide("off", 3) == (False, "3 agents — MPS off (off): plain time-slicing")
    assert decide("on", 3, forced_off="--no-mps") == (False, "3 agents — MPS off (--no-mps): plain time-slicing")
    assert decide("on", 0, forced_off="--no-mps")[0] is False


def test_enforcement_without_mps_depends_on_the_agent() -> None:
    assert enforcement(True, builtin=False) == "mps-pinned"
    assert enforcement(False, builtin=True) == "allocator-cap"
    assert enforcement(False, builtin=False) == "none"
