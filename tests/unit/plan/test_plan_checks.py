"""colo.plan.checks: what `colo validate` finds in the seed's allocation file, and in a plan that leaves an
agent out."""

from __future__ import annotations

from pathlib import Path

from colo.plan import inventory_slots, plan
from colo.plan.checks import check_allocation, check_plan
from colo.spec.config import Policy
from colo.spec.load import load_config_text
from colo.spec.seed_format import load_document, parse_allocation

SEED = Path(__file__).resolve().parents[2] / "fixtures" / "seed_mps_allocation_config.json"


def test_the_seeds_summary_does_not_add_up_and_its_margins_are_thin() -> None:
    loaded, kind = load_document(str(SEED))
    assert kind == "allocation"
    found = {(f.severity, f.where): f.message for f in check_allocation(parse_allocation(loaded), Policy().margin)}
    summary = "mps_resource_allocation.system_summary"
    assert found[("error", f"{summary}.total_calculated_memory_gb")] == "says 16 GB but the agent rows add up to 16.5 GB"
    assert ("error", f"{summary}.total_safety_margin_gb") in found
    assert ("warning", "mps_resource_allocation.agent_allocations.critic.safety_margin_gb") in found
    assert not any(w.endswith("total_mps_allocation_gb") for _, w in found)  # the limits do fit the GPU


def test_an_agent_that_fits_nowhere_is_an_error_naming_it() -> None:
    cfg = load_config_text(
        "version: 1\ngpus: [{name: A, memory: 8GiB}]\nmodels: {big: {memory: 20GiB}, small: {memory: 1GiB}}\n"
        "agents: {huge: {models: [big]}, tiny: {models: [small]}}"
    )
    findings = check_plan(plan(cfg, inventory_slots(cfg)))
    errors = [f for f in findings if f.severity == "error"]
    assert [f.where for f in errors] == ["agents.huge"] and errors[0].message.startswith("does not fit: huge needs")
