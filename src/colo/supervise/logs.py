"""Per-agent log files with rotation, and what colo reads in them (out-of-memory, MPS errors).

Each agent's stdout and stderr are appended straight to ``<state_dir>/logs/<agent>.log`` by the agent's own
file descriptor (opened with O_APPEND), so the agent keeps logging when the orchestrator is gone. Rotation is
therefore copy-then-truncate: the file is copied to ``<agent>.log.1`` (older copies shift to ``.2`` …) and
truncated in place; O_APPEND writers continue at the new end. :class:`LogScanner` reads only what is new
since the last tick and notices truncation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from colo import units
from colo.clock import SYSTEM_CLOCK, Clock

DEFAULT_MAX_BYTES = 20 * units.MIB
DEFAULT_BACKUPS = 3

OOM_PATTERNS = (
    "CUDA out of memory",
    "OutOfMemoryError",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "cudaErrorMemoryAllocation",
    "CUDA error: out of memory",  # torch's text for cudaErrorMemoryAllocation outside the caching allocator
)
MPS_ERROR_PATTERNS = (
    "cudaErrorMpsServerNotReady",
    "MPS_SERVER_NOT_READY",
    "cudaErrorMpsConnectionFailed",
    "cudaErrorMpsRpcFailure",
    "CUDA_ERROR_MPS_CONNECTION_FAILED",
    "CUDA_ERROR_MPS_RPC_FAILURE",
    "CUDA_ERROR_MPS_SERVER_NOT_READY",
    "error 805",
    "error code 805",
    "error 806",
    "error code 806",
    "error 807",
    "error code 807",
    "illegal memory access",
    "an illegal memory access was encountered",
    "cudaErrorIllegalAddress",
    "CUDA_ERROR_ILLEGAL_ADDRESS",
)
# (cudaErrorMpsClientTerminated is left out: colo's own terminate_client causes it on every stop.)
# Errors that mean *this* client caused the fault (not merely saw it).
FAULT_CAUSE_PATTERNS = ("illegal memory access", "cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS")


@dataclass(frozen=True)
class LogFindings:
    """What new log text says: an out-of-memory line, an MPS/GPU-fault line (first one of each)."""

    oom: str | None = None
    mps_error: str | None = None
    fault_cause: bool = False


def scan_text(text: str) -> LogFindings:
    """Look for out-of-memory and MPS error lines in ``text``."""
    oom = mps = None
    cause = False
    for line in text.splitlines():
        low = line.lower()
        if oom is None and any(p.lower() in low for p in OOM_PATTERNS):
            oom = line.strip()[:300]
        if any(p.lower() in low for p in MPS_ERROR_PATTERNS):
            mps = mps or line.strip()[:300]
            cause = cause or any(p.lower() in low for p in FAULT_CAUSE_PATTERNS)
    return LogFindings(oom, mps, cause)


COLO_MARK = "--- colo: "  # the lines colo itself writes into an agent's log (AgentLogs.mark)
LAST_LINE_MAX_CHARS = 300


def last_line(path: Path, *, window_bytes: int = 16 * 1024) -> str | None:
    """The last non-empty line of ``path`` that colo did not write itself (stripped, at most 300
    characters), or None when there is none or the file cannot be read. Reads only the file's last
    ``window_bytes``: the line a crashed agent printed last, e.g. ``ModuleNotFoundError: No module named 'torch'``.
    """
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - window_bytes, 0))
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(data.splitlines()):
        text = line.strip()
        if text and not text.startswith(COLO_MARK.strip()):
            return text[:LAST_LINE_MAX_CHARS]
    return None


class AgentLogs:
    """The log files of all agents under ``log_dir``. Sizes in bytes."""

    def __init__(self, log_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        self.dir = Path(log_dir)
        self.max_bytes = max_bytes
        self.backups = backups

    def path(self, agent: str) -> Path:
        """``<log_dir>/<agent>.log``."""
        return self.dir / f"{agent}.log"

    def mark(self, agent: str, text: str) -> None:
        """Append a colo line (``--- colo: ...``) to the agent's log, e.g. before each start."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path(agent), "a", encoding="utf-8") as fh:
            fh.write(f"{COLO_MARK}{text}\n")

    def rotate_if_needed(self, agent: str) -> bool:
        """Copy-then-truncate the log once it passes ``max_bytes``; True when it rotated."""
        path = self.path(agent)
        try:
            if path.stat().st_size <= self.max_bytes:
                return False
        except FileNotFoundError:
            return False
        for i in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        if self.backups > 0:
            shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        with open(path, "r+b") as fh:
            fh.truncate(0)
        return True

    def tail(self, agent: str, lines: int = 100) -> list[str]:
        """The last ``lines`` lines of the agent's current log ([] when there is none)."""
        path = self.path(agent)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return []
        chunk = min(size, max(lines, 1) * 400 + 4096)
        with open(path, "rb") as fh:
            fh.seek(size - chunk)
            data = fh.read().decode(errors="replace")
        out = data.splitlines()
        if chunk < size and out:
            out = out[1:]  # first line is probably cut
        return out[-lines:] if lines > 0 else []

    def follow(
        self,
        agent: str,
        *,
        keep_going: Callable[[], bool],
        poll_secs: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Iterator[str]:
        """Yield new text appended to the log until ``keep_going()`` is false (handles truncation); between
        reads that found nothing it waits ``poll_secs`` on ``clock``."""
        scanner = LogScanner(self.path(agent), from_end=True)
        while keep_going():
            text = scanner.read_new()
            if text:
                yield text
            else:
                clock.sleep(poll_secs)


class LogScanner:
    """What was appended to one file since the last call (byte offsets; back to 0 on truncation)."""

    def __init__(self, path: Path, *, from_end: bool = False, max_read_bytes: int = 4 * units.MIB) -> None:
        self.path = Path(path)
        self.max_read_bytes = max_read_bytes
        self.offset = 0
        if from_end:
            try:
                self.offset = self.path.stat().st_size
            except FileNotFoundError:
                self.offset = 0

    def read_new(self) -> str:
        """Text appended since the last call ("" when nothing new or no file)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return ""
        if size < self.offset:
            self.offset = 0  # truncated by rotation
        if size == self.offset:
            return ""
        start = max(self.offset, size - self.max_read_bytes)
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(size - start)
        self.offset = start + len(data)
        return data.decode(errors="replace")
