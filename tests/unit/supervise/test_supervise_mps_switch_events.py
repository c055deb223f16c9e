"""colo.supervise.mps_switch: the MPS decision of each GPU said as events (on up, and after an apply only for
the GPUs that switched), and the GPUs `colo status` names as running MPS."""

from __future__ import annotations

from colo.plan import GpuSlot, plan
from colo.plan.types import Plan
from colo.spec.load import load_config_text
from colo.supervise.mps_switch import mps_events, mps_labels
from colo.supervise.snapshots import EventKind

GIB = 1 << 30
SLOTS = [GpuSlot("local", 0, "A", 8 * GIB, uuid="GPU-0"), GpuSlot("local", 1, "A", 8 * GIB, uuid="GPU-1")]


def _plan(mps: str) -> Plan:
    cfg = load_config_text(
        f"version: 1\ngpus: [{{name: A, memory: 8GiB, count: 2}}]\npolicy: {{mps: {mps}}}\n"
        "models: {m: {memory: 1GiB}}\n"
        "agents: {a: {models: [m], gpu: 0}, b: {models: [m], gpu: 0}, c: {models: [m], gpu: 1}}"
    )
    return plan(cfg, SLOTS)


def test_on_up_each_gpu_says_whether_it_runs_mps_and_why() -> None:
    p = _plan("auto")
    seen: list[tuple[EventKind, str | None, str, str | None]] = []
    mps_events(lambda *e: seen.append(e), p, p.agents)
    assert [(k, gpu) for k, _, _, gpu in seen] == [(EventKind.MPS_MODE, "GPU-0"), (EventKind.MPS_MODE, "GPU-1")]
    assert seen[0][2].startswith("gpu0: 2 agents — MPS on (auto)") and "MPS off (auto)" in seen[1][2]
    assert mps_labels(p, p.agents) == ["gpu0"]


def test_after_an_apply_only_the_gpus_that_switched_are_told() -> None:
    before, after = _plan("auto"), _plan("on")
    seen: list[str] = []
    mps_events(lambda kind, agent, message, gpu: seen.append(message), after, after.agents, before)
    assert seen == ["gpu1: switches to MPS: 1 agent — MPS on (on)"]
    assert mps_labels(after, after.agents) == ["gpu0", "gpu1"]
