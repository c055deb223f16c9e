"""colo.supervise.statedir.stop_orchestrator: what ``colo down`` does to the orchestrator holding a state dir —
SIGTERM, then a wait (on the injected clock) until it lets go of the state dir, bounded by the timeout."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.errors import SupervisorError
from colo.supervise.lockfile import StateLock
from colo.supervise.statedir import StateDirPaths, Stopped, stop_orchestrator


@pytest.fixture
def stand_in() -> Iterator[subprocess.Popen[bytes]]:
    """A process to stand in for the orchestrator: the one that gets the SIGTERM."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def held_by(paths: StateDirPaths, pid: int | None) -> StateLock:
    lock = StateLock(paths)
    lock.acquire()
    if pid is not None:
        lock.write_pid(pid)
    return lock


def test_nothing_running_and_nothing_left_over(tmp_path: Path) -> None:
    assert stop_orchestrator(tmp_path / "sd", timeout_secs=5.0, clock=FakeClock()) == Stopped(None, [])


def test_the_orchestrator_gets_sigterm_and_down_waits_until_it_lets_go(
    tmp_path: Path, stand_in: subprocess.Popen[bytes]
) -> None:
    paths = StateDirPaths(tmp_path / "sd")
    lock = held_by(paths, stand_in.pid)

    class LetsGo(FakeClock):
        def sleep(self, secs: float) -> None:  # the orchestrator stops its agents, then releases the state dir
            super().sleep(secs)
            lock.release()

    assert stop_orchestrator(paths.root, timeout_secs=5.0, clock=LetsGo()) == Stopped(stand_in.pid, [])
    assert stand_in.wait(timeout=10) == -signal.SIGTERM


def test_an_orchestrator_that_does_not_stop_in_time_is_an_error(
    tmp_path: Path, stand_in: subprocess.Popen[bytes]
) -> None:
    paths = StateDirPaths(tmp_path / "sd")
    lock = held_by(paths, stand_in.pid)
    clock = FakeClock()
    try:
        with pytest.raises(SupervisorError, match=rf"\(pid {stand_in.pid}\) did not stop within 5 s") as err:
            stop_orchestrator(paths.root, timeout_secs=5.0, clock=clock)
    finally:
        lock.release()
    assert f"kill -9 {stand_in.pid}" in str(err.value)
    assert clock.monotonic() > 1005.0  # waited the timeout out on the clock it was given, never on the wall


def test_a_state_dir_locked_without_a_pid_file_is_refused(tmp_path: Path) -> None:
    paths = StateDirPaths(tmp_path / "sd")
    lock = held_by(paths, None)
    try:
        with pytest.raises(SupervisorError, match="locked by a process without a pid file"):
            stop_orchestrator(paths.root, timeout_secs=5.0, clock=FakeClock())
    finally:
        lock.release()
