"""Fixtures every supervise test gets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_leftover_dirs() -> Iterator[None]:
    """Removes the ``/tmp/cs*`` state dirs a test made (``World`` of test_supervise_orchestrator.py makes them
    short, under /tmp, so that MPS pipe paths stay within the socket-path limit)."""
    before = set(Path("/tmp").glob("cs*"))
    yield
    for d in set(Path("/tmp").glob("cs*")) - before:
        shutil.rmtree(d, ignore_errors=True)
