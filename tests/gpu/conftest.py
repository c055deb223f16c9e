"""Fixtures and hooks every GPU test module shares (helpers to import: ``mps_daemons``, ``newsroom``,
``leftovers``; the suite's lanes and table: ``suite``).

- ``state_dir``: a private, short state dir under /tmp per test.
- ``newsroom`` (session): the sized newsroom up once through the real CLI, shared by every test that leaves it
  healthy (``newsroom.Newsroom``), always taken down at the end.
- markers: ``smoke`` (the tests ``make gpu-smoke`` runs), ``newsroom_order(n)`` (the order of the newsroom's
  tests; default 0).
- lanes: with ``COLO_GPU_LANE`` set, only that lane's tests run (``suite.lane_of``); the newsroom's tests run
  first in their lane (``suite.run_order``).
- records: with ``COLO_GPU_RESULTS`` set, one JSON line per collected test and per test run (``suite``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from newsroom import Newsroom, running_newsroom
from suite import LANES, file_of, lane_of, merge_outcome, run_order


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: part of `make gpu-smoke` (daemon, newsroom, one fault, down)")
    config.addinivalue_line("markers", "newsroom_order(n): order among the newsroom's tests (default 0)")
    path = os.environ.get("COLO_GPU_RESULTS")
    if path:
        config.pluginmanager.register(ResultRecorder(Path(path)), "colo-gpu-results")


GPU_TESTS = Path(__file__).resolve().parent


def _uses_newsroom(item: pytest.Item) -> bool:
    return Path(item.path).parent == GPU_TESTS and "newsroom" in getattr(item, "fixturenames", ())


def _newsroom_order(item: pytest.Item) -> int:
    mark = item.get_closest_marker("newsroom_order")
    return int(mark.args[0]) if mark is not None and mark.args else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lane = os.environ.get("COLO_GPU_LANE", "")
    if lane:
        if lane not in LANES:
            raise pytest.UsageError(f"COLO_GPU_LANE={lane!r}: write one of {', '.join(LANES)}")
        keep = [i for i in items if lane_of(str(i.path), _uses_newsroom(i)) == lane]
        gone = [i for i in items if i not in keep]
        if gone:
            config.hook.pytest_deselected(items=gone)
        items[:] = keep
    order = run_order([_uses_newsroom(i) for i in items], [_newsroom_order(i) for i in items])
    items[:] = [items[i] for i in order]


class ResultRecorder:
    """Appends one JSON line per collected test, then one per test run (outcome, seconds), flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lane = os.environ.get("COLO_GPU_LANE", "")
        self._outcome: dict[str, str] = {}
        self._secs: dict[str, float] = {}

    def _write(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            self._write({"event": "collected", "nodeid": item.nodeid, "file": file_of(item.nodeid), "lane": self.lane})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nid = report.nodeid
        self._outcome[nid] = merge_outcome(self._outcome.get(nid), report.when, report.outcome)
        self._secs[nid] = self._secs.get(nid, 0.0) + float(report.duration)
        if report.when == "teardown":
            self._write(
                {"event": "ran", "nodeid": nid, "outcome": self._outcome[nid], "seconds": round(self._secs[nid], 2)}
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test of the newsroom keeps its logs (``Newsroom.failed_tests``)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        room = getattr(item, "funcargs", {}).get("newsroom")
        if isinstance(room, Newsroom):
            room.failed_tests.append(item.nodeid)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A private, short state dir under /tmp (MPS pipe dirs must stay under the Unix socket path limit)."""
    d = Path(tempfile.mkdtemp(prefix="colo-gpu-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def newsroom() -> Iterator[Newsroom]:
    """The sized newsroom, up and serving once per session (``newsroom.Newsroom``); always taken down."""
    with running_newsroom() as room:
        yield room
