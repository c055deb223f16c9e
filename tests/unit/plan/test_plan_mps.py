"""policy.mps (auto | on | off, gpus[].mps per inventory row): the plan's per-GPU decision and its reason,
each agent's enforcement, the config's validation, and what `colo plan` / `colo validate` / the allocation
document show. Pure: no GPU, no MPS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli.main import app
from colo.errors import ConfigError
from colo.plan import inventory_slots, plan
from colo.plan.allocation_doc import allocation_document
from colo.spec import load_config_text
from colo.spec.config import ColoConfig
from colo.spec.load import parse_document
from colo.spec.seed_format import parse_allocation

runner = CliRunner()


def cfg(mps: str | None, *, row_mps: str | None = None, gpu1: int = 1, command: bool = True) -> ColoConfig:
    """gpu0 gets agents a and b (pinned), gpu1 gets ``gpu1`` agents; two 24 GiB GPUs."""
    pol = f"policy: {{mps: {mps}}}\n" if mps else ""
    row = f", mps: {row_mps}" if row_mps else ""
    cmd = ", command: [bin]" if command else ""
    agents = "".join(f"  {n}: {{models: [m], gpu: 0{cmd}}}\n" for n in ("a", "b"))
    agents += "".join(f"  c{i}: {{models: [m], gpu: 1{cmd}}}\n" for i in range(gpu1))
    text = f"gpus: [{{memory: 24GiB, count: 2{row}}}]\n{pol}models: {{m: {{memory: 1GiB}}}}\nagents:\n{agents}"
    return load_config_text(text, "c.yaml")


def decisions(c: ColoConfig, **kw: str) -> dict[str, tuple[bool, str]]:
    p = plan(c, inventory_slots(c), **kw)  # type: ignore[arg-type]
    return {g.gpu.label: (g.mps, g.mps_reason) for g in p.gpus}


@pytest.mark.parametrize(
    ("mode", "gpu1", "expect"),
    [
        (None, 1, {"gpu0": True, "gpu1": False}),  # the default is auto
        ("auto", 1, {"gpu0": True, "gpu1": False}),
        ("auto", 2, {"gpu0": True, "gpu1": True}),
        ("auto", 0, {"gpu0": True, "gpu1": False}),
        ("on", 1, {"gpu0": True, "gpu1": True}),
        ("on", 0, {"gpu0": True, "gpu1": False}),  # no agent, no daemon, even when on
        ("off", 1, {"gpu0": False, "gpu1": False}),
        ("off", 2, {"gpu0": False, "gpu1": False}),
    ],
)
def test_decision_table(mode: str | None, gpu1: int, expect: dict[str, bool]) -> None:
    got = decisions(cfg(mode, gpu1=gpu1))
    assert {k: v[0] for k, v in got.items()} == expect


def test_reasons_say_why() -> None:
    got = decisions(cfg("auto"))
    assert got["gpu0"][1] == "2 agents — MPS on (auto): agents share the GPU under their MPS limits"
    lone = got["gpu1"][1]
    assert lone.startswith("1 agent — MPS off (auto): a lone process runs ~13–15 % faster time-sliced")
    assert "H100/H200" in lone and "docs/benchmarks.md" in lone
    assert decisions(cfg("auto", gpu1=0))["gpu1"][1] == "no agent — no MPS daemon"
    assert decisions(cfg("on"))["gpu1"][1] == "1 agent — MPS on (on)"
    assert decisions(cfg("off"))["gpu0"][1] == "2 agents — MPS off (off): plain time-slicing"


def test_no_mps_run_turns_every_gpu_off_and_says_so() -> None:
    got = decisions(cfg("on", gpu1=2), mps_off="--no-mps")
    assert got == {
        "gpu0": (False, "2 agents — MPS off (--no-mps): plain time-slicing"),
        "gpu1": (False, "2 agents — MPS off (--no-mps): plain time-slicing"),
    }


def test_per_gpu_row_overrides_policy() -> None:
    assert {k: v[0] for k, v in decisions(cfg("off", row_mps="on")).items()} == {"gpu0": True, "gpu1": True}
    assert {k: v[0] for k, v in decisions(cfg("on", row_mps="auto")).items()} == {"gpu0": True, "gpu1": False}
    text = (
        "gpus: [{memory: 24GiB, mps: off}, {memory: 24GiB}]\npolicy: {mps: on}\nmodels: {m: {memory: 1GiB}}\n"
        "agents: {a: {models: [m], gpu: 0}, b: {models: [m], gpu: 1}}\n"
    )
    c = load_config_text(text, "c.yaml")
    p = plan(c, inventory_slots(c))
    assert [(g.gpu.label, g.mps, g.mps_mode) for g in p.gpus] == [("gpu0", False, "off"), ("gpu1", True, "on")]


def test_enforcement_per_agent() -> None:
    command = plan(c := cfg("auto"), inventory_slots(c))
    assert {a.name: a.enforcement for a in command.agents} == {"a": "mps-pinned", "b": "mps-pinned", "c0": "none"}
    builtin = plan(c := cfg("auto", command=False), inventory_slots(c))
    assert builtin.agent("c0").enforcement == "allocator-cap" and not builtin.agent("c0").mps
    assert builtin.agent("a").enforcement == "mps-pinned" and builtin.agent("a").mps


def test_unplaced_agent_has_no_enforcement() -> None:
    text = "gpus: [{memory: 1GiB}]\nmodels: {m: {memory: 4GiB}}\nagents: {a: {models: [m]}}\n"
    c = load_config_text(text, "c.yaml")
    (a,) = plan(c, inventory_slots(c)).agents
    assert a.gpu is None and a.enforcement is None and not a.mps


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("policy: {mps: sometimes}\n", "policy.mps"),
        ("policy: {mps: true}\n", "policy.mps"),
        ("gpus: [{memory: 24GiB, mps: always}]\n", "gpus[0].mps"),
    ],
)
def test_bad_mps_value_is_a_config_error(text: str, where: str, tmp_path: Path) -> None:
    body = text + ("" if text.startswith("gpus") else "gpus: [{memory: 24GiB}]\n")
    body += "models: {m: {memory: 1GiB}}\nagents: {a: {models: [m]}}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(body, "c.yaml")
    err = info.value
    assert err.field == where and err.exit_code == 2
    assert "'auto'" in str(err) and "'on'" in str(err) and "'off'" in str(err)
    f = tmp_path / "colo.yaml"
    f.write_text(body)
    r = runner.invoke(app, ["validate", str(f)])
    assert r.exit_code == 2 and "colo.yaml" in r.output and where in r.output
    r = runner.invoke(app, ["plan", str(f)])
    assert r.exit_code == 2


def test_allocation_document_adds_mps_keys_and_stays_seed_readable() -> None:
    c = cfg("auto", command=False)
    doc = allocation_document(plan(c, inventory_slots(c)))
    gpus = {g["key"]: g for g in doc["colo"]["gpus"]}
    assert gpus["local:0"]["mps"] is True and gpus["local:0"]["mps_mode"] == "auto"
    assert gpus["local:1"]["mps"] is False and "MPS off (auto)" in gpus["local:1"]["mps_reason"]
    assert doc["colo"]["mps_gpus"] == ["local:0"]
    rows = doc["mps_resource_allocation"]["agent_allocations"]
    assert rows["a"]["colo"]["mps"] is True and rows["a"]["colo"]["memory_enforcement"] == "mps-pinned"
    assert rows["c0"]["colo"]["mps"] is False and rows["c0"]["colo"]["memory_enforcement"] == "allocator-cap"
    # the seed's keys are all still there, and a seed-format reader still reads it
    assert set(rows["a"]) == {
        "mps_memory_limit_gb", "calculated_requirement_gb", "safety_margin_gb", "priority", "models", "colo",
    }
    parsed = parse_allocation(parse_document(json.dumps(doc), "a.json"))
    assert set(parsed.mps_resource_allocation.agent_allocations) == {"a", "b", "c0"}


def test_colo_plan_and_validate_show_the_decision(tmp_path: Path) -> None:
    f = tmp_path / "colo.yaml"
    f.write_text(
        "gpus: [{memory: 24GiB, count: 2}]\nmodels: {m: {memory: 1GiB}}\n"
        "agents: {a: {models: [m], gpu: 0}, b: {models: [m], gpu: 0}, c: {models: [m], gpu: 1}}\n"
    )
    r = runner.invoke(app, ["plan", str(f)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "MPS gpu0: 2 agents — MPS on (auto)" in out and "MPS gpu1: 1 agent — MPS off (auto)" in out
    assert "allocator-cap" in out and "mps-pinned" in out
    r = runner.invoke(app, ["plan", str(f), "--json"])
    assert json.loads(r.stdout)["colo"]["mps_gpus"] == ["local:0"]
    r = runner.invoke(app, ["validate", str(f)])
    assert r.exit_code == 0, r.output  # the decision is information, not a finding
    assert "gpu1: 1 agent — MPS off (auto)" in " ".join(r.output.split())
    r = runner.invoke(app, ["validate", str(f), "--json"])
    (entry,) = json.loads(r.stdout)["files"]
    assert entry["findings"] == [] and entry["mps"][0].startswith("gpu0: 2 agents — MPS on (auto)")
