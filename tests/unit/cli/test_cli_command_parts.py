"""The parts of the CLI commands that are logic, met by name: ``--since``, ``--gpu``, what `colo plan`
accepts, how `colo render` replaces an earlier rendering, and the commands `colo serve`/`colo top` and
`colo capacity`/`colo advise` add."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from colo import units
from colo.cli.advise_cmd import register as register_advise
from colo.cli.api_cmd import register as register_api
from colo.cli.plan_cmd import load_plannable, parse_gpu_option
from colo.cli.render_cmd import RENDER_MARK, _write_tree
from colo.cli.tune_cmd import parse_since
from colo.errors import UsageError

ROOT = Path(__file__).resolve().parents[3]


def test_since_is_a_positive_duration() -> None:
    assert parse_since(None) is None
    assert parse_since("30m") == 1800.0 and parse_since("7d") == 7 * 86400.0
    with pytest.raises(UsageError, match="--since '0s': give a period longer than zero"):
        parse_since("0s")
    with pytest.raises(UsageError, match="--since 'soon'"):
        parse_since("soon")


def test_gpu_option_rows() -> None:
    rows = parse_gpu_option(["24GiB", "node-a:8x80GiB"])
    assert [(r.node, r.count, r.memory_bytes) for r in rows] == [("local", 1, 24 * units.GIB), ("node-a", 8, 80 * units.GIB)]
    with pytest.raises(UsageError, match="--gpu 'lots': write e.g. '24GiB'"):
        parse_gpu_option(["lots"])


def test_plan_takes_a_config_with_a_gpu_override_and_refuses_an_allocation_file(tmp_path: Path) -> None:
    cfg = load_plannable(str(ROOT / "examples" / "newsroom" / "colo.yaml"), ["2x80GiB"])
    assert cfg.gpus != "auto" and [(g.count, g.memory_bytes) for g in cfg.gpus] == [(2, 80 * units.GIB)]
    alloc = ROOT / "tests" / "fixtures" / "seed_mps_allocation_config.json"
    with pytest.raises(UsageError, match="is an allocation file"):
        load_plannable(str(alloc), [])


def test_render_replaces_its_own_old_files_and_keeps_others(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    (out / "agents").mkdir(parents=True)
    (out / "agents" / "gone.yaml").write_text(f"{RENDER_MARK} k8s`\nold: 1\n")
    (out / "agents" / "mine.yaml").write_text("hand: written\n")
    written = _write_tree(out, {"agents/critic.yaml": "a: 1\n"}, prune=("agents",))
    assert written == [out / "agents" / "critic.yaml"]
    assert sorted(p.name for p in (out / "agents").iterdir()) == ["critic.yaml", "mine.yaml"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a directory"):
        _write_tree(tmp_path / "file", {})


def test_api_commands_register_serve_and_top() -> None:
    app = typer.Typer()
    register_api(app)
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "/mps/allocation" in result.output
    assert CliRunner().invoke(app, ["top", "--help"]).exit_code == 0


def test_advise_commands_register_capacity_and_advise() -> None:
    app = typer.Typer()
    register_advise(app)
    assert [c.name for c in app.registered_commands] == ["capacity", "advise"]
    result = CliRunner().invoke(app, ["capacity", "--help"])
    assert result.exit_code == 0 and "--gpu-memory" in result.output
    result = CliRunner().invoke(app, ["advise", "--help"])
    assert result.exit_code == 0 and "--bench" in result.output and "--since" in result.output
