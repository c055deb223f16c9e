"""procs.wait_any_exit: a process that exits wakes the waiter at once; nothing exiting waits the timeout."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from colo.gpu import procs


def test_an_exit_wakes_the_wait_at_once() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        woke = procs.wait_any_exit([quick.pid, slow.pid], 20.0)
        assert woke == [quick.pid] and time.monotonic() - started < 10.0  # not the 20 s timeout
    finally:
        slow.kill()
        slow.wait()
        quick.wait()


def test_nothing_exiting_waits_the_timeout_and_stop_ends_it() -> None:
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        assert procs.wait_any_exit([slow.pid], 0.3) == []
        assert time.monotonic() - started >= 0.3
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        assert procs.wait_any_exit([slow.pid], 20.0, stop) == []
        assert time.monotonic() - started < 10.0
    finally:
        slow.kill()
        slow.wait()


def test_a_pid_already_gone_returns_at_once() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert procs.wait_any_exit([gone.pid], 20.0) == [gone.pid]
