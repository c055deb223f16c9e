"""Where colo's MPS daemons live: one pipe dir and one log dir per GPU, under colo's state dir.

Layout (``MpsRoot``)::

    <state_dir>/mps/<GPU UUID>/pipe   the pipe directory of that GPU's daemon (and of its clients)
    <state_dir>/mps/<GPU UUID>/log    its log directory: control.log, server.log

Raises: MpsError for a name that is not a GPU UUID.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colo.errors import MpsError

# A Unix socket path has at most 107 bytes and MPS creates its sockets inside the pipe dir: leave room.
MAX_PIPE_DIR_CHARS = 88


@dataclass(frozen=True)
class MpsPaths:
    """The pipe dir and log dir of one GPU's daemon."""

    pipe_dir: Path
    log_dir: Path


class MpsRoot:
    """colo's MPS directory: one ``<uuid>/pipe`` and ``<uuid>/log`` per GPU."""

    def __init__(self, base_dir: str | Path) -> None:
        self.base_dir = Path(base_dir)

    @classmethod
    def under_state_dir(cls, state_dir: str | Path) -> MpsRoot:
        """The root colo uses by default: ``<state_dir>/mps``."""
        return cls(Path(state_dir) / "mps")

    def for_gpu(self, uuid: str) -> MpsPaths:
        """Paths for the GPU with this UUID (not created)."""
        if not uuid or "/" in uuid or uuid in {".", ".."}:
            raise MpsError(f"{uuid!r} is not a GPU UUID", hint="use the UUID `colo gpu info` prints")
        d = self.base_dir / uuid
        return MpsPaths(pipe_dir=d / "pipe", log_dir=d / "log")

    def gpu_uuids(self) -> list[str]:
        """UUIDs that have a directory here (daemons colo started at some time)."""
        if not self.base_dir.is_dir():
            return []
        return sorted(p.name for p in self.base_dir.iterdir() if (p / "pipe").is_dir())
