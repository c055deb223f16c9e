"""Where an agent's start-up time goes: one line in its log and the ``start`` object of its ``/health``.

The runner that starts the agent (:mod:`colo.launch`) puts two variables in its environment:
:data:`REQUESTED_VAR`, the ``time.monotonic()`` of the spawn/fork request (CLOCK_MONOTONIC is one clock for
every process of a Linux machine), and :data:`LAUNCHED_BY_VAR` (``fork`` or ``spawn``). The agent marks the end
of each phase on the same clock; the first ``/health`` that answers ready ends the last one, and the agent logs::

    start phases: fork 0.01s imports 0.00s setup 0.02s cuda_context 0.25s weights 0.30s warmup 0.20s health_ready 0.05s total 0.83s

Phases, in order (each from the end of the one before): ``fork`` or ``spawn`` (request -> the agent's ``main``
runs: the fork, or a new interpreter and its first imports), ``imports`` (the config read and
:func:`~colo.modelserver.serve.import_modules`), ``setup`` (the device chosen, the allocator cap of an agent
without MPS, the HTTP app built), ``cuda_context`` (what is left of creating the CUDA context: it starts on a side thread as soon as the
device is chosen, before the imports; ~0 on CPU; the HTTP server starts meanwhile), ``weights`` (every model built, or taken from the launcher and moved to the
device), ``warmup`` (the warm-up forwards), ``health_ready`` (ready -> the first ``/health`` that says so: the
supervisor's probe cadence). Without :data:`REQUESTED_VAR` (started by hand) the first phase is left out and
the total starts at ``main``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from colo.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("colo.modelserver")

#: ``time.monotonic()`` of the request that started this process (set by the runner).
REQUESTED_VAR = "COLO_LAUNCH_REQUESTED_MONOTONIC"
#: How the process was started: ``fork`` (from the pre-imported launcher) or ``spawn``.
LAUNCHED_BY_VAR = "COLO_LAUNCHED_BY"
LAUNCHED_BY = ("fork", "spawn")
#: The phases after the process runs, in order.
PHASES = ("imports", "setup", "cuda_context", "weights", "warmup", "health_ready")


def launch_env(launched_by: str, requested_monotonic: float) -> dict[str, str]:
    """The variables a runner adds to an agent's environment (see the module docstring)."""
    return {LAUNCHED_BY_VAR: launched_by, REQUESTED_VAR: repr(requested_monotonic)}


class StartPhases:
    """The phases of one agent's start (seconds), marked as they end. Thread-safe (marked from the main thread,
    the loader, and the HTTP thread answering ``/health``)."""

    def __init__(self, environ: Mapping[str, str], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.launched_by = environ.get(LAUNCHED_BY_VAR, "")
        if self.launched_by not in LAUNCHED_BY:
            self.launched_by = "unknown"
        now = clock.monotonic()
        requested: float | None = None
        try:
            requested = float(environ.get(REQUESTED_VAR, ""))
        except ValueError:
            requested = None
        # A request time in the future, or hours old, is not this process's (an inherited variable): ignored.
        if requested is not None and not 0.0 <= now - requested < 3600.0:
            requested = None
        self._start = requested if requested is not None else now
        self._last = now if requested is not None else self._start
        self.phases_secs: dict[str, float] = {}
        if requested is not None:
            self.phases_secs[self.launched_by if self.launched_by != "unknown" else "launch"] = now - requested
        self.logged = False

    def mark(self, phase: str, secs: float | None = None) -> None:
        """End ``phase`` now (or give its length, ``secs``, measured elsewhere). A phase marked twice keeps
        its first value."""
        with self._lock:
            now = self._clock.monotonic()
            if phase not in self.phases_secs:
                self.phases_secs[phase] = max(0.0, now - self._last) if secs is None else max(0.0, secs)
            self._last = now

    @property
    def total_secs(self) -> float:
        with self._lock:
            return max(0.0, self._last - self._start)

    def line(self) -> str:
        """``start phases: fork 0.01s imports 0.00s ... total 0.81s``."""
        with self._lock:
            parts = " ".join(f"{k} {v:.2f}s" for k, v in self.phases_secs.items())
        return f"start phases: {parts} total {self.total_secs:.2f}s"

    def on_health(self, ready: bool) -> dict[str, Any]:
        """Called for every ``/health`` answer; the first one that is ``ready`` ends ``health_ready`` and logs
        :meth:`line` once. Returns the ``start`` object of the body."""
        if ready and not self.logged:
            with self._lock:
                first = not self.logged
                self.logged = True
            if first:
                self.mark("health_ready")
                log.info("%s", self.line())
        return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        """``{"launched_by", "phases_secs", "total_secs", "complete"}`` (rounded to ms)."""
        with self._lock:
            phases = {k: round(v, 3) for k, v in self.phases_secs.items()}
            complete = "health_ready" in phases
        return {
            "launched_by": self.launched_by,
            "phases_secs": phases,
            "total_secs": round(self.total_secs, 3),
            "complete": complete,
        }
