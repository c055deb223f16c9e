"""One orchestrator per state directory: the ``colo.lock`` file it holds (``flock``) and its ``colo.pid``.

``colo.supervise.statedir.running_orchestrator`` is the reading side (who holds the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from colo.errors import SupervisorError
from colo.files import write_atomic
from colo.supervise.statedir import StateDirPaths


class StateLock:
    """The state dir's lock, held by the running orchestrator from :meth:`acquire` to :meth:`release`."""

    def __init__(self, paths: StateDirPaths) -> None:
        self.paths = paths
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (creating the state dir). Raises SupervisorError when another orchestrator holds it."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            other = None
            with contextlib.suppress(OSError, ValueError):
                other = int(self.paths.pid_file.read_text().strip())
            raise SupervisorError(
                f"another colo orchestrator{f' (pid {other})' if other else ''} is running with state dir "
                f"{self.paths.root}",
                hint="`colo status` shows it; `colo down` stops it; or use another --state-dir",
            ) from exc
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (what the process's death does too). Safe to call twice."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def write_pid(self, pid: int | None = None) -> None:
        """Record the orchestrator's pid (``colo down`` signals it)."""
        write_atomic(self.paths.pid_file, f"{pid or os.getpid()}\n")

    def remove_pid(self) -> None:
        with contextlib.suppress(OSError):
            self.paths.pid_file.unlink()
