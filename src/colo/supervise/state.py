"""Agent process states and the transitions allowed between them (stdlib only).

RUNNING means "passed its health check" (or stayed up ``start_secs`` when it has none), not "forked".
``docs/states.md`` draws this table.
"""

from __future__ import annotations

from enum import StrEnum


class AgentState(StrEnum):
    """Where an agent's process is in its life."""

    STOPPED = "STOPPED"  # not running, and not asked to be
    STARTING = "STARTING"  # spawned; waiting for its health check
    RUNNING = "RUNNING"  # healthy
    BACKOFF = "BACKOFF"  # exited or failed to become healthy; waiting before the next start
    STOPPING = "STOPPING"  # asked to stop; waiting for it to exit
    EXITED = "EXITED"  # exited on its own and the restart policy does not start it again
    FATAL = "FATAL"  # could not be kept up (crash loop, spawn error, MPS recovery gave up); needs a person


ALLOWED: dict[AgentState, frozenset[AgentState]] = {
    AgentState.STOPPED: frozenset(
        {
            AgentState.STARTING,  # STOPPED -> STARTING: start requested (colo up, API start)
            AgentState.RUNNING,  # STOPPED -> RUNNING: re-adopted a live process after an orchestrator restart
            AgentState.BACKOFF,  # STOPPED -> BACKOFF: start requested while its GPU's MPS daemon does not answer
            AgentState.FATAL,  # STOPPED -> FATAL: MPS recovery gave up on it (stopped by that recovery, or to give up)
        }
    ),
    AgentState.STARTING: frozenset(
        {
            AgentState.RUNNING,  # STARTING -> RUNNING: health check passed
            AgentState.BACKOFF,  # STARTING -> BACKOFF: exited or never became healthy; retries left
            AgentState.FATAL,  # STARTING -> FATAL: spawn failed, or retries used up
            AgentState.STOPPING,  # STARTING -> STOPPING: stop requested while starting
            AgentState.EXITED,  # STARTING -> EXITED: exited and the policy says never restart
        }
    ),
    AgentState.RUNNING: frozenset(
        {
            AgentState.BACKOFF,  # RUNNING -> BACKOFF: exited/crashed/unhealthy; policy restarts it
            AgentState.STOPPING,  # RUNNING -> STOPPING: stop, restart, apply, or MPS fault recovery
            AgentState.EXITED,  # RUNNING -> EXITED: exited and the policy does not restart it
            AgentState.FATAL,  # RUNNING -> FATAL: crashed and no retries are left
        }
    ),
    AgentState.BACKOFF: frozenset(
        {
            AgentState.STARTING,  # BACKOFF -> STARTING: backoff delay over
            AgentState.FATAL,  # BACKOFF -> FATAL: retries used up, or MPS recovery gave up on it
            AgentState.STOPPED,  # BACKOFF -> STOPPED: stop requested while waiting
        }
    ),
    AgentState.STOPPING: frozenset(
        {
            AgentState.STOPPED,  # STOPPING -> STOPPED: the process is gone
        }
    ),
    AgentState.EXITED: frozenset(
        {
            AgentState.STARTING,  # EXITED -> STARTING: started again by hand
            AgentState.STOPPED,  # EXITED -> STOPPED: stop requested (clears the state)
            AgentState.BACKOFF,  # EXITED -> BACKOFF: started by hand while its GPU's MPS daemon does not answer
        }
    ),
    AgentState.FATAL: frozenset(
        {
            AgentState.STARTING,  # FATAL -> STARTING: started again by hand
            AgentState.STOPPED,  # FATAL -> STOPPED: stop requested (clears the state)
            AgentState.BACKOFF,  # FATAL -> BACKOFF: started by hand while its GPU's MPS daemon does not answer
        }
    ),
}


class TransitionError(Exception):
    """A transition not in :data:`ALLOWED`: a bug in colo, never a user error."""


def check_transition(old: AgentState, new: AgentState) -> None:
    """Raise TransitionError unless ``old -> new`` is allowed."""
    if new not in ALLOWED[old]:
        raise TransitionError(f"{old.value} -> {new.value} is not an allowed agent transition")
