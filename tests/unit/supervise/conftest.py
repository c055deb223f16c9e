"""Fixtures every supervise test gets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import SHORT_DIR_PREFIX


@pytest.fixture(autouse=True)
def _no_leftover_dirs() -> Iterator[None]:
    """Removes the short state dirs under /tmp a test made (``testkit.short_state_dir``: named for this test
    process, so another run's dirs — a parallel test session's — are never touched)."""
    before = set(Path("/tmp").glob(f"{SHORT_DIR_PREFIX}*"))
    yield
    for d in set(Path("/tmp").glob(f"{SHORT_DIR_PREFIX}*")) - before:
        shutil.rmtree(d, ignore_errors=True)
