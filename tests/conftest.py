"""Shared test set-up: examples' paths; GPU tests are deselected unless `-m gpu` is given."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def newsroom_path() -> Path:
    return NEWSROOM
