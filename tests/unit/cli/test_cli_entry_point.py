"""The installed ``colo`` console script, run as a user runs it: usage errors exit 2 with typer's message and
no crash file; a reader that goes away (``colo … | head``) ends colo quietly with 141."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from colo.cli.common import EXIT_CLOSED_PIPE
from colo.cli.main import CLICK_EXITS, app

ROOT = Path(__file__).resolve().parents[3]
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"

USAGE_ERRORS = [
    (["plan"], "Missing argument 'CONFIG'"),
    (["plan", "x.yaml", "--bogus"], "No such option: --bogus"),
    (["version"], "No such command 'version'"),
]


def installed_colo() -> str:
    """The ``colo`` console script of this interpreter's environment (what `make test` installs)."""
    found = shutil.which("colo", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no `colo` console script beside {sys.executable}: install colo (`make test` does: pip install -e .)")
    return found


def crash_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a child colo whose crash files, if any, land under ``tmp_path`` (the state dir's
    ``crashes/``, else the temp directory: :func:`colo.cli.common.crash_log_dir`)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "COLO_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}


def crash_files(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.rglob("colo-crash-*"))


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_usage_error_exits_2_through_the_installed_entry_point(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [installed_colo(), *args], capture_output=True, text=True, timeout=60, env=crash_env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Usage: colo" in result.stderr
    assert "internal error" not in result.stderr and result.stdout == ""
    assert crash_files(tmp_path) == []


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_usage_errors_are_what_colo_lets_through(args: list[str], message: str) -> None:
    # The exception mapping itself: typer's click raises these for usage errors, and colo's error path
    # passes them on (a crash would come back as exit code 70 here instead of raising).
    command = typer.main.get_command(app)
    with pytest.raises(CLICK_EXITS) as caught:
        command.main(args, prog_name="colo", standalone_mode=False)
    assert getattr(caught.value, "exit_code", None) == 2
    assert message.split("'")[0].strip() in str(caught.value.format_message())  # type: ignore[union-attr]


def test_click_exits_are_typer_s_own() -> None:
    exit_, abort, click_exception = CLICK_EXITS
    assert exit_ is typer.Exit and abort is typer.Abort
    assert click_exception.__name__ == "ClickException" and issubclass(typer.BadParameter, click_exception)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["top", "--help"], ["plan", str(NEWSROOM)], ["validate", str(NEWSROOM), "--json"], ["schema"]],
    ids=["root-help", "top-help", "plan-table", "validate-json", "schema-json"],
)
def test_closed_stdout_exits_quietly(tmp_path: Path, args: list[str]) -> None:
    # The reader leaves before colo writes a byte: every write colo makes meets a closed pipe.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [installed_colo(), *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
            env=crash_env(tmp_path), cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_CLOSED_PIPE, result.stderr
    assert result.stderr == ""
    assert crash_files(tmp_path) == []

