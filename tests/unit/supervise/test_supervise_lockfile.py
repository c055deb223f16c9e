"""colo.supervise.lockfile: one orchestrator per state dir — a second one is refused, naming the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo.errors import SupervisorError
from colo.supervise.lockfile import StateLock
from colo.supervise.statedir import StateDirPaths, running_orchestrator


def test_a_second_orchestrator_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    paths = StateDirPaths(tmp_path / "sd")
    first, second = StateLock(paths), StateLock(paths)
    first.acquire()  # creates the state dir
    first.write_pid(4242)
    assert first.held and running_orchestrator(paths.root) == 4242
    with pytest.raises(SupervisorError, match=r"another colo orchestrator \(pid 4242\) is running"):
        second.acquire()
    assert not second.held
    first.release()
    first.release()  # twice is fine
    first.remove_pid()
    assert running_orchestrator(paths.root) is None and not paths.pid_file.exists()
    second.acquire()
    assert second.held
    second.release()
