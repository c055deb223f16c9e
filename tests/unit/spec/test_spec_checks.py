"""spec/checks.py: what colo up would fail on that a file can show (ports, commands, cwd), with lines."""

from __future__ import annotations

from pathlib import Path

from colo.spec.checks import check_file
from colo.spec.load import config_from_loaded, parse_document

BASE = "gpus: [{memory: 24GiB}]\nmodels: {m: {memory: 1GiB}}\nagents:\n"


def findings(agents: str, *, builtin_port=None):  # type: ignore[no-untyped-def]
    loaded = parse_document(BASE + agents, "c.yaml")
    return check_file(config_from_loaded(loaded), loaded, builtin_port=builtin_port)


def test_two_agents_on_one_port() -> None:
    out = findings("  a: {models: [m], port: 9000}\n  b:\n    models: [m]\n    port: 9000\n")
    assert len(out) == 1
    f = out[0]
    assert f.severity == "error" and f.field == "agents.b.port" and f.line == 7 and "line 4" in f.message


def test_agent_on_the_api_port() -> None:
    out = findings("  a: {models: [m], port: 8014}\n")
    assert [f.field for f in out] == ["agents.a.port"] and "the API" in out[0].message


def test_builtin_default_ports_counted() -> None:
    out = findings("  a: {models: [m]}\n  b: {models: [m], port: 9100}\n", builtin_port=lambda name: 9100)
    assert [f.field for f in out] == ["agents.b.port"]


def test_multi_node_inventory_skips_ports() -> None:
    text = ("gpus: [{node: x, memory: 24GiB}, {node: y, memory: 24GiB}]\nmodels: {m: {memory: 1GiB}}\n"
            "agents: {a: {models: [m], port: 9000}, b: {models: [m], port: 9000}}\n")
    loaded = parse_document(text, "c.yaml")
    assert check_file(config_from_loaded(loaded), loaded) == []


def test_commands_not_on_path_are_warnings(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    out = findings(
        f"  a: {{models: [m], command: [no-such-cmd-xyz]}}\n"
        f"  b: {{models: [m], command: [{script}]}}\n"
        f"  c: {{models: [m], command: [sh, -c, 'true'], health: {{type: command, command: [nope-xyz]}}}}\n"
        f"  d: {{models: [m], command: [./x], cwd: {tmp_path / 'nodir'}}}\n"
    )
    by_field = {f.field: f for f in out}
    assert all(f.severity == "warning" for f in out)
    assert "not on PATH" in by_field["agents.a.command[0]"].message and by_field["agents.a.command[0]"].line == 4
    assert "not executable" in by_field["agents.b.command[0]"].message
    assert "agents.c.health.command[0]" in by_field
    assert "not a directory" in by_field["agents.d.cwd"].message


def test_clean_file_has_no_findings() -> None:
    assert findings("  a: {models: [m], command: [sh, -c, 'true'], port: 9000}\n") == []
