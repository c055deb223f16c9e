"""Shared test set-up: examples' paths; GPU tests are deselected unless `-m gpu` is given; no test (nor a
`colo` it runs) forks from a node launcher this machine may run, unless it starts its own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from colo.launch.node_launcher import SOCKET_ENV

ROOT = Path(__file__).resolve().parent.parent
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"
FIXTURES = ROOT / "tests" / "fixtures"

os.environ[SOCKET_ENV] = str(Path(tempfile.gettempdir()) / f"colo-tests-{os.getpid()}" / "launcher.sock")


@pytest.fixture
def newsroom_path() -> Path:
    return NEWSROOM


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly how many GPU tests this run left out (they run on a GPU with `make gpu-test`)."""
    deselected = terminalreporter.stats.get("deselected", [])
    gpu = [item for item in deselected if item.get_closest_marker("gpu") is not None]
    if gpu:
        terminalreporter.write_line(
            f"{len(gpu)} GPU test(s) skipped here (marked gpu); run them on a GPU machine: make gpu-test"
        )
