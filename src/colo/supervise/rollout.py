"""Moving the supervised agents to a new plan (``colo apply``, a reload, a tuned-limit rollback): agents no
longer planned here are retired, new ones started, and only those whose limit, placement, command or env
changed are queued for the supervisor's rolling restart (one at a time); the others take the new setup in
place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from colo.errors import DoesNotFitError
from colo.plan.types import Unplaced
from colo.supervise.agent import AgentSetup
from colo.supervise.agent_setup import describe_change
from colo.supervise.snapshots import ApplyResult
from colo.supervise.supervisor import Supervisor


def refuse_left_out(left_out: Sequence[Unplaced]) -> None:
    """Raise DoesNotFitError when the new plan leaves out an agent above ``low`` priority (nothing changes)."""
    refused = [u for u in left_out if u.priority != "low"]
    if refused:
        raise DoesNotFitError(
            "the new configuration does not fit, nothing was changed: "
            + "; ".join(f"{u.agent} ({u.priority}): {u.reason}" for u in refused),
            agents=tuple(u.agent for u in refused),
            hint="lower limits or margins, remove agents, or add GPUs",
        )


def roll_out(sup: Supervisor, new: Mapping[str, AgentSetup], why: str) -> ApplyResult:
    """Move ``sup`` to the setups ``new`` (plan order); ``why`` prefixes each restart's reason (``apply``).
    Returns what was stopped, started, restarted (queued) and left unchanged."""
    result = ApplyResult()
    roll: list[tuple[AgentSetup, str]] = []
    for name in list(sup.agents):
        if name not in new:
            sup.retire(name)
            result.stopped.append(name)
    for name, setup in new.items():
        agent = sup.agents.get(name)
        if agent is None:
            sup.add(setup).start(f"added by {why}")
            result.started.append(name)
        elif agent.setup.needs_restart_for(setup):
            roll.append((setup, f"{why}: {describe_change(agent.setup, setup)}"))
            result.restarted.append(name)
        else:
            agent.reconfigure(setup)
            result.unchanged.append(name)
    sup.roll(roll)
    return result
