"""The CLI's one error path: exit codes 1/2/70, the crash line, escaped user text, piped output unwrapped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli import common
from colo.cli.common import plain, safe
from colo.cli.main import app

runner = CliRunner()


def test_plain_escapes_controls_surrogates_and_bidi() -> None:
    assert plain("a\x1b[31mb\x00c\x7f\x9b") == "a\\e[31mb\\x00c\\x7f\\x9b"
    assert plain("x\ud800y") == "x\\ud800y"
    assert plain("m\u202egnp") == "m\\u202egnp"
    assert plain("line1\nline2") == "line1\\nline2"
    assert plain("line1\nline2", keep_newlines=True) == "line1\nline2"
    assert plain("ünïcödé 😀 ok") == "ünïcödé 😀 ok"


def test_safe_escapes_markup() -> None:
    import io

    from rich.console import Console

    con = Console(width=200, record=True, file=io.StringIO())
    con.print(f"[bold]x[/] {safe('[red]gone[/red] [/] [/x]')}")
    assert con.export_text().strip() == "x [red]gone[/red] [/] [/x]"


def test_crash_is_exit_70_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COLO_STATE_DIR", str(tmp_path))

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("colo.cli.plan_cmd.load_plannable", boom)
    result = runner.invoke(app, ["plan", "whatever.yaml"])
    assert result.exit_code == common.EXIT_CRASH
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "internal error" in lines[0] and "RuntimeError" in lines[0]
    logs = list((tmp_path / "crashes").glob("colo-crash-*.log"))
    assert len(logs) == 1 and "RuntimeError: boom" in logs[0].read_text() and str(logs[0]) in lines[0]


def test_config_error_is_2_findings_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: [\n")
    assert runner.invoke(app, ["validate", str(bad)]).exit_code == 2
    assert runner.invoke(app, ["plan", str(bad)]).exit_code == 2
    seed = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "seed_mps_allocation_config.json"
    assert runner.invoke(app, ["validate", str(seed)]).exit_code == 1


def test_piped_output_does_not_wrap(tmp_path: Path) -> None:
    long_name = "x" * 300 + ".yaml"
    result = subprocess.run(
        [sys.executable, "-c", "from colo.cli.entry import main; main()", "validate", str(tmp_path / long_name)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and long_name in lines[0]
