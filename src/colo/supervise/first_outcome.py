"""The agents' first outcome after ``colo up``: did each reach RUNNING, or is it crash-looping, and why.

``colo up`` launches the agents and then waits — bounded by their start timeouts — until every agent has a
first outcome: RUNNING (its health check passed), or a failure (it exited and is in BACKOFF waiting to be
started again, or FATAL, or EXITED) with the last line its process printed. :func:`wait_first_outcomes` polls
a reader of :class:`~colo.supervise.snapshots.AgentStatus` (the orchestrator's, or the store's) with an
injected clock; :class:`UpOutcome` is the summary the CLI prints (and ``--json`` prints whole).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from colo.clock import Clock
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import AgentStatus
from colo.supervise.state import AgentState

#: Seconds past the slowest agent's start timeout (plus its stop wait) before the wait gives up.
SLACK_SECS = 5.0
POLL_SECS = 0.2


class Outcome(StrEnum):
    """An agent's first outcome (``starting``: none yet when the wait ended)."""

    RUNNING = "running"  # health check passed
    CRASH_LOOP = "crash-looping"  # exited and is being started again (BACKOFF, or STARTING after a restart)
    FATAL = "fatal"  # gave up: retries used up, or could not be spawned
    EXITED = "exited"  # exited; its restart policy does not start it again
    STOPPED = "stopped"  # stopped (by a person, or colo down) before it had an outcome
    STARTING = "starting"  # still starting when the wait ended


@dataclass(frozen=True)
class AgentOutcome:
    """One agent's first outcome: its state then, colo's reason (``exit code 1``) and the last line its
    process printed before it failed (e.g. ``ModuleNotFoundError: No module named 'torch'``)."""

    name: str
    outcome: Outcome
    state: AgentState
    restarts: int
    reason: str | None = None
    last_error_line: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "state": self.state.value,
            "restarts": self.restarts,
            "reason": self.reason,
            "last_error_line": self.last_error_line,
        }


@dataclass(frozen=True)
class UpOutcome:
    """Every launched agent's first outcome, and how long the wait took (seconds)."""

    agents: tuple[AgentOutcome, ...]
    waited_secs: float
    timed_out: bool = False

    @property
    def running(self) -> list[AgentOutcome]:
        return [a for a in self.agents if a.outcome == Outcome.RUNNING]

    @property
    def not_running(self) -> list[AgentOutcome]:
        return [a for a in self.agents if a.outcome != Outcome.RUNNING]

    @property
    def all_running(self) -> bool:
        return not self.not_running

    def to_dict(self) -> dict[str, Any]:
        return {
            "all_running": self.all_running,
            "running": len(self.running),
            "total": len(self.agents),
            "waited_secs": round(self.waited_secs, 1),
            "timed_out": self.timed_out,
            "agents": [a.to_dict() for a in self.agents],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UpOutcome:
        """Read :meth:`to_dict`'s form back (the detached ``colo up`` gets it through the store)."""
        agents = tuple(
            AgentOutcome(
                name=str(a["name"]),
                outcome=Outcome(a["outcome"]),
                state=AgentState(a["state"]),
                restarts=int(a["restarts"]),
                reason=a.get("reason"),
                last_error_line=a.get("last_error_line"),
            )
            for a in d.get("agents", [])
        )
        return cls(agents, float(d.get("waited_secs", 0.0)), bool(d.get("timed_out", False)))


def classify(status: AgentStatus, restarts_at_start: int) -> Outcome | None:
    """``status``'s first outcome, or None while it has none yet (STARTING, never failed since the wait began).

    ``restarts_at_start``: its restart count when the wait began; more restarts since, with a failure's log line
    recorded, mean it failed and was started again between two polls (a crash loop).
    """
    state = status.state
    if state == AgentState.RUNNING:
        return Outcome.RUNNING
    if state == AgentState.FATAL:
        return Outcome.FATAL
    if state == AgentState.EXITED:
        return Outcome.EXITED
    if state == AgentState.BACKOFF:
        return Outcome.CRASH_LOOP
    if state == AgentState.STOPPED:
        return Outcome.STOPPED
    if state == AgentState.STARTING and status.restarts > restarts_at_start and status.last_error_line:
        return Outcome.CRASH_LOOP  # failed and already started again (a restart by apply has no error line)
    return None  # STARTING, or STOPPING (a restart in progress: it comes back through STARTING)


def wait_secs(config: ColoConfig, names: Sequence[str]) -> float:
    """How long (seconds) to wait for the first outcome of ``names``: the slowest agent's start timeout
    (``health.startup_timeout_secs``, or ``start_secs`` for ``type: none``) plus its stop wait (an agent that
    never gets ready is killed first), plus :data:`SLACK_SECS`."""
    longest = 0.0
    for name in names:
        agent = config.agents.get(name)
        if agent is None:
            continue
        health = agent.health
        start = health.start_secs if health.type == "none" else health.startup_timeout_secs
        longest = max(longest, start + agent.restart.stop_wait_secs)
    return longest + SLACK_SECS


def _outcome_of(status: AgentStatus, outcome: Outcome) -> AgentOutcome:
    return AgentOutcome(
        status.name, outcome, status.state, status.restarts, status.last_error, status.last_error_line
    )


def wait_first_outcomes(
    read: Callable[[], Sequence[AgentStatus]],
    names: Sequence[str],
    *,
    timeout_secs: float,
    clock: Clock,
    keep_going: Callable[[], bool] = lambda: True,
    on_progress: Callable[[int, int, float], None] | None = None,
    poll_secs: float = POLL_SECS,
) -> UpOutcome:
    """Poll ``read()`` until every agent of ``names`` has a first outcome, ``timeout_secs`` pass, or
    ``keep_going()`` turns false; agents without one then are :attr:`Outcome.STARTING`.

    ``on_progress(settled, total, elapsed_secs)`` is called after each poll. An agent missing from what
    ``read`` returns counts as still starting.
    """
    start = clock.monotonic()
    wanted = list(dict.fromkeys(names))
    first: dict[str, AgentOutcome] = {}
    baseline: dict[str, int] = {}
    latest: dict[str, AgentStatus] = {}
    while True:
        for status in read():
            if status.name not in wanted or status.name in first:
                continue
            latest[status.name] = status
            baseline.setdefault(status.name, status.restarts)
            outcome = classify(status, baseline[status.name])
            if outcome is not None:
                first[status.name] = _outcome_of(status, outcome)
        elapsed = clock.monotonic() - start
        if on_progress is not None:
            on_progress(len(first), len(wanted), elapsed)
        if len(first) == len(wanted) or elapsed >= timeout_secs or not keep_going():
            break
        clock.sleep(poll_secs)
    timed_out = len(first) < len(wanted)
    agents = []
    for name in wanted:
        if name in first:
            agents.append(first[name])
        elif name in latest:
            agents.append(_outcome_of(latest[name], Outcome.STARTING))
        else:
            agents.append(AgentOutcome(name, Outcome.STARTING, AgentState.STARTING, 0))
    return UpOutcome(tuple(agents), clock.monotonic() - start, timed_out)
