"""`colo plan`'s findings for a person: one line per cause naming its agents, errors first, one line of what
to do; `--json` keeps every finding."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import NEWSROOM
from typer.testing import CliRunner

from colo.cli.main import app
from colo.cli.views.findings import FindingGroup, group_findings
from colo.spec import load_config
from colo.supervise import planning

runner = CliRunner()
MINI = "sentence-transformers/all-MiniLM-L6-v2"
TINY = "google/bert_uncased_L-2_H-128_A-2"


def test_same_message_is_one_group_errors_first() -> None:
    rows = [
        ("warning", "margin", "a", "margin low"),
        ("warning", "memory", "a", "model x too small"),
        ("error", "memory", "b", "model y runs out"),
        ("warning", "memory", "c", "model x too small"),
        ("error", "memory", "d", "model y runs out"),
        ("warning", "margin", "a", "margin low"),  # said twice about one agent: named once
    ]
    assert group_findings(rows) == [
        FindingGroup("error", "memory", "model y runs out", ("b", "d")),
        FindingGroup("warning", "memory", "model x too small", ("a", "c")),
        FindingGroup("warning", "margin", "margin low", ("a",)),
    ]


def test_newsroom_plan_prints_one_line_per_cause() -> None:
    findings = planning.plan_config(load_config(NEWSROOM)).plan.findings
    r = runner.invoke(app, ["plan", str(NEWSROOM)])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith(("error:", "warning:"))]
    assert len(lines) == len({(f.severity, f.message) for f in findings}) < len(findings)
    assert lines[0].startswith("error:") and not any(line.startswith("error:") for line in lines[1:])
    (mini,) = [line for line in lines if MINI in line]
    assert mini.endswith("(agents: memory, newsreader)") and "it will run out of memory" in mini
    (tiny,) = [line for line in lines if TINY in line]
    assert tiny.startswith("warning:") and tiny.endswith("(agents: analyst, balancer, scout)")
    last = r.output.rstrip().splitlines()[-1]
    assert last.startswith("to do:") and str(NEWSROOM) in last and "--from-db" in last
    assert "--force" in last  # an error predicts out-of-memory: colo up refuses without it


def test_json_keeps_every_finding_per_agent() -> None:
    findings = planning.plan_config(load_config(NEWSROOM)).plan.findings
    r = runner.invoke(app, ["plan", str(NEWSROOM), "--json"])
    listed = json.loads(r.stdout)["colo"]["findings"]
    assert len(listed) == len(findings)
    assert {f["agent"] for f in listed if MINI in f["message"]} == {"memory", "newsreader"}


def test_clean_plan_prints_no_advice(tmp_path: Path) -> None:
    config = tmp_path / "colo.yaml"
    config.write_text(
        "gpus: [{name: GPU, memory: 24GiB}]\n"
        "models: {m: {memory: 1GiB}}\n"
        "agents: {a: {models: [m]}}\n"
    )
    r = runner.invoke(app, ["plan", str(config)])
    assert r.exit_code == 0, r.output
    assert "to do:" not in r.output and "warning:" not in r.output


def test_validate_groups_the_same_finding_by_field() -> None:
    r = runner.invoke(app, ["validate", str(NEWSROOM)])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.startswith(("error:", "warning:"))]
    (mini,) = [line for line in lines if MINI in line]
    assert lines[0] == mini and mini.endswith("(at: agents.memory.memory, agents.newsreader.memory)")
    assert r.output.rstrip().splitlines()[-2].startswith("to do:")  # then the mps: line
    seed = NEWSROOM.parents[2] / "tests" / "fixtures" / "seed_mps_allocation_config.json"
    r = runner.invoke(app, ["validate", str(seed)])
    margins = [line for line in r.output.splitlines() if "on 3.0 GB is 33%" in line]
    assert len(margins) == 1 and "critic" not in margins[0]
    assert "agent_allocations.scout.safety_margin_gb, " in margins[0] and "synthesizer" in margins[0]
