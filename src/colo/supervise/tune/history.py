"""The usage history: per agent, its GPU memory high-water mark over each window and the largest request
shapes it had served, kept in the state database (``usage`` table of :class:`~colo.supervise.store.Store`).

Sources (one each, named so nobody guesses):

* **memory**: the orchestrator's one GPU reading (``colo.supervise.publish``): NVML's per-process used memory
  summed over the agent's process tree, taken by the supervisor's memory poll (every 2 s); a window keeps
  the highest of its polls;
* **request shapes**: the built-in agent's ``/health`` body, ``largest_batch`` — per model, the largest
  batch (rows × padded length, new tokens) its device thread ran successfully since the process started —
  read from the health probe colo already sends (no extra request). A command agent reports none;
* **out of memory**: the supervisor's OOM sign for the agent (its log's "CUDA out of memory" line, or the
  built-in agent's ``out_of_memory`` count in ``/health``), counted per window.

A window is ``policy.history_window`` long (default 10 s); at its end one row per agent that was polled is
written in one SQLite transaction, which also prunes rows older than ``policy.history_retention`` and the
oldest beyond ``policy.history_max_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from colo.clock import Clock
from colo.errors import ColoError
from colo.spec.config import Policy
from colo.supervise.snapshots import Shape, UsageSample
from colo.supervise.store import Store


@dataclass
class _Window:
    peak_bytes: int = 0
    limit_bytes: int = 0
    polls: int = 0
    gpu: str | None = None
    shapes: tuple[Shape, ...] = ()
    oom: int = 0
    first_requests: int | None = None
    last_requests: int | None = None

    def requests(self) -> int | None:
        if self.first_requests is None or self.last_requests is None:
            return None
        # a restart in the window resets the agent's count: what the new process answered is a lower bound
        return self.last_requests - self.first_requests if self.last_requests >= self.first_requests else self.last_requests


@dataclass
class UsageRecorder:
    """Accumulates one window per agent and writes it to ``store`` when the window is over."""

    store: Store
    clock: Clock
    window_secs: float = 10.0
    retention_secs: float = 7 * 86400.0
    max_rows: int = 200_000
    last: dict[str, UsageSample] = field(default_factory=dict)  # each agent's last written window
    rows: int = 0  # rows in the history after the last write
    _open: dict[str, _Window] = field(default_factory=dict)
    _start_wall: float | None = None
    _due: float | None = None

    @classmethod
    def for_policy(cls, store: Store, clock: Clock, policy: Policy) -> UsageRecorder:
        """A recorder with ``policy``'s window, retention and row cap (``policy.history_*``)."""
        return cls(
            store, clock, window_secs=policy.history_window_secs, retention_secs=policy.history_retention_secs,
            max_rows=policy.history_max_rows,
        )

    def note(
        self,
        agent: str,
        used_bytes: int | None,
        limit_bytes: int,
        gpu: str | None,
        shapes: Sequence[Shape] = (),
        requests: int | None = None,
    ) -> None:
        """One memory poll of ``agent`` (``used_bytes`` None: its process was not in the reading;
        ``requests``: the count of requests it answered since it started, when it says)."""
        self._begin()
        w = self._open.setdefault(agent, _Window())
        if requests is not None:
            w.first_requests = requests if w.first_requests is None else w.first_requests
            w.last_requests = requests
        if used_bytes is not None:
            w.peak_bytes = max(w.peak_bytes, used_bytes)
            w.polls += 1
        w.limit_bytes, w.gpu = limit_bytes, gpu
        if shapes:
            w.shapes = tuple(shapes)

    def note_oom(self, agent: str) -> None:
        """``agent`` ran out of memory (once per sign the supervisor sees)."""
        self._begin()
        self._open.setdefault(agent, _Window()).oom += 1

    def _begin(self) -> None:
        if self._due is None:
            self._start_wall = self.clock.wall()
            self._due = self.clock.monotonic() + self.window_secs

    def tick(self, *, force: bool = False) -> list[UsageSample]:
        """Write the window when it is over (or ``force``); returns the rows written. A database error is
        swallowed (the history is best effort; supervision goes on) and the window is dropped."""
        if self._due is None or (not force and self.clock.monotonic() < self._due):
            return []
        start, end = self._start_wall or self.clock.wall(), self.clock.wall()
        samples = [
            UsageSample(name, start, end, w.peak_bytes, w.limit_bytes, w.polls, w.gpu, w.shapes, w.oom, w.requests())
            for name, w in sorted(self._open.items())
            if w.polls or w.oom
        ]
        self._open.clear()
        self._due = self._start_wall = None
        if not samples:
            return []
        try:
            self.store.add_usage(samples, keep_after=end - self.retention_secs, max_rows=self.max_rows)
            self.rows = self.store.usage_rows()
        except ColoError:
            return []
        self.last.update({s.agent: s for s in samples})
        return samples
