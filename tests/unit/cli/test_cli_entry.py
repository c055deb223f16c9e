"""The ``colo`` console script (:mod:`colo.cli.entry`): the command runs as through ``colo.cli.main``, and a
launcher is started early for ``colo up`` only (:mod:`colo.launch.prestart`)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from colo import __version__
from colo.cli import entry
from colo.launch import prestart

ROOT = Path(__file__).resolve().parents[3]


def test_the_console_script_is_the_entry() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["colo"] == "colo.cli.entry:main"


def test_a_command_other_than_up_runs_and_starts_no_launcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(prestart, "popen_launcher", lambda argv, env, stderr: started.append(list(argv)))
    monkeypatch.setattr(sys, "argv", ["colo", "--version"])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code in (0, None)
    assert capsys.readouterr().out.strip() == f"colo {__version__}"
    assert started == [] and prestart._held is None


def test_an_unclaimed_launcher_is_ended_when_the_command_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``colo up CONFIG`` whose config does not validate: the launcher started first is ended by the entry."""
    config = tmp_path / "colo.yaml"
    config.write_text("version: 1\nagents: 7\n")
    ended: list[object] = []
    real_end = prestart._end
    monkeypatch.setattr(prestart, "_end", lambda held: (ended.append(held), real_end(held)))
    monkeypatch.setattr(sys, "argv", ["colo", "up", str(config), "--state-dir", str(tmp_path / "state")])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 2
    assert len(ended) == 1 and prestart._held is None
    assert "colo.yaml" in capsys.readouterr().err
