"""Fixtures every GPU test module shares (helpers to import: ``mps_daemons``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A private, short state dir under /tmp (MPS pipe dirs must stay under the Unix socket path limit)."""
    d = Path(tempfile.mkdtemp(prefix="colo-gpu-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
