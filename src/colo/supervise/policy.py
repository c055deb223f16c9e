"""Restart policy as plain data: when an exited agent starts again, and after how long.

``RestartRules`` is built once from a colo.yaml ``restart:`` block; the agent state machine asks it
questions and never reads the spec itself. Crash loop = more than ``max_retries`` failures in a row, where a
failure is an exit while STARTING, or an exit within ``stable_secs`` of becoming RUNNING.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Literal

from colo.spec.config import RestartPolicy

SIGNALS: dict[str, int] = {
    "TERM": int(signal.SIGTERM),
    "INT": int(signal.SIGINT),
    "QUIT": int(signal.SIGQUIT),
    "HUP": int(signal.SIGHUP),
}

#: An agent that stayed RUNNING this long has its failure count reset (seconds).
DEFAULT_STABLE_SECS = 30.0


@dataclass(frozen=True)
class RestartRules:
    """When to restart. Seconds throughout; ``stop_signal`` is a signal number."""

    policy: Literal["always", "on-failure", "never"] = "on-failure"
    max_retries: int = 5
    backoff_initial_secs: float = 1.0
    backoff_max_secs: float = 60.0
    stop_wait_secs: float = 10.0
    stop_signal: int = int(signal.SIGTERM)
    stable_secs: float = DEFAULT_STABLE_SECS

    @classmethod
    def from_spec(cls, spec: RestartPolicy, *, stable_secs: float = DEFAULT_STABLE_SECS) -> RestartRules:
        """The rules of a colo.yaml ``restart:`` block: its fields as they are, but the stop signal's number."""
        same = spec.model_dump(exclude={"stop_signal"})
        return cls(**same, stop_signal=SIGNALS[spec.stop_signal], stable_secs=stable_secs)

    def wants_restart(self, *, succeeded: bool) -> bool:
        """Whether an agent that exited on its own (``succeeded``: exit code 0) should start again."""
        if self.policy == "always":
            return True
        if self.policy == "on-failure":
            return not succeeded
        return False

    def gives_up(self, failures_in_a_row: int) -> bool:
        """True once ``failures_in_a_row`` (>= 1) exceeds ``max_retries``: a crash loop, go FATAL."""
        return failures_in_a_row > self.max_retries

    def backoff_secs(self, failures_in_a_row: int) -> float:
        """Delay before the next start: ``initial × 2^(n-1)``, capped at ``backoff_max_secs`` (seconds)."""
        n = max(failures_in_a_row, 1)
        delay = self.backoff_initial_secs * (2.0 ** min(n - 1, 62))
        return min(delay, self.backoff_max_secs)
