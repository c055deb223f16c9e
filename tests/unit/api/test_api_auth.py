"""The API token: created once with mode 0600, reused, overridden by COLO_API_TOKEN; the bearer check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from colo.api.auth import TOKEN_ENV, bearer_matches, load_or_create_token, read_token, token_path
from colo.errors import ConfigError


def test_first_start_creates_a_private_token(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path / "state", env={})
    path = token_path(tmp_path / "state")
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40
    assert load_or_create_token(tmp_path / "state", env={}) == token  # reused, not regenerated
    assert read_token(tmp_path / "state", env={}) == token


def test_tokens_differ_between_state_dirs(tmp_path: Path) -> None:
    assert load_or_create_token(tmp_path / "a", env={}) != load_or_create_token(tmp_path / "b", env={})


def test_env_overrides_and_writes_nothing(tmp_path: Path) -> None:
    assert load_or_create_token(tmp_path, env={TOKEN_ENV: " from-env "}) == "from-env"
    assert not token_path(tmp_path).exists()
    assert read_token(tmp_path, env={TOKEN_ENV: "from-env"}) == "from-env"


def test_loose_file_mode_is_tightened(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    path.write_text("abc\n")
    path.chmod(0o644)
    assert load_or_create_token(tmp_path, env={}) == "abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_token_yet(tmp_path: Path) -> None:
    assert read_token(tmp_path, env={}) is None


def test_unreadable_token_is_a_config_error(tmp_path: Path) -> None:
    token_path(tmp_path).mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(ConfigError) as err:
        read_token(tmp_path, env={})
    assert "api-token" in str(err.value)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer tok", True),
        ("bearer tok", True),
        ("Bearer  tok ", True),
        ("Bearer tok2", False),
        ("Bearer to", False),
        ("Basic tok", False),
        ("tok", False),
        ("", False),
        (None, False),
        ("Bearer ", False),
        ("Bearer tök", False),
    ],
)
def test_bearer_matches(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, "tok") is ok
