"""colo.files: atomic writes (the old file or the new one, never half), and where the state lives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from colo.errors import ConfigError
from colo.files import default_state_dir, state_dir, write_atomic


def test_write_atomic_creates_parents_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "plan.json"
    assert write_atomic(target, "one") == target
    write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["plan.json"]


def test_write_atomic_names_the_path_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write") as info:
        write_atomic(blocker / "inside.json", "{}")  # a file where a directory should be
    assert str(blocker / "inside.json") in str(info.value)
    assert blocker.read_text() == "x"


def test_state_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_STATE_DIR", str(tmp_path / "env"))
    assert default_state_dir() == tmp_path / "env"
    assert state_dir("~/sd") == Path.home() / "sd"  # the config's state_dir wins
    assert state_dir(None) == tmp_path / "env"
    monkeypatch.delenv("COLO_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    expected = Path("/var/lib/colo") if os.geteuid() == 0 else tmp_path / "xdg" / "colo"
    assert default_state_dir() == expected
