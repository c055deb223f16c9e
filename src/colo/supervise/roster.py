"""The agents of the plan in force on this node, as the API and the CLI see them: the supervised ones, then
those the plan left out (STOPPED, the reason in ``last_error``), and which agent an action may act on.
"""

from __future__ import annotations

from colo.errors import PlanError
from colo.plan.types import Plan, Unplaced
from colo.spec.config import ColoConfig
from colo.supervise.agent import Agent
from colo.supervise.snapshots import AgentStatus
from colo.supervise.state import AgentState
from colo.supervise.supervisor import Supervisor


def left_out_status(config: ColoConfig, u: Unplaced) -> AgentStatus:
    """An agent the plan left out, as a status: STOPPED, the reason in ``last_error``."""
    models = tuple(config.agents[u.agent].models) if u.agent in config.agents else ()
    return AgentStatus(
        name=u.agent,
        state=AgentState.STOPPED,
        pid=None,
        gpu=None,
        gpu_uuid=None,
        limit_bytes=u.limit_bytes,
        requirement_bytes=0,
        priority=u.priority,
        restarts=0,
        last_error=f"left out: {u.reason}",
        models=models,
    )


def statuses(sup: Supervisor, plan: Plan | None, config: ColoConfig) -> list[AgentStatus]:
    """Every agent of the plan: supervised ones, then those left out."""
    out = sup.statuses()
    have = {s.name for s in out}
    out.extend(left_out_status(config, u) for u in (plan.unplaced if plan else ()) if u.agent not in have)
    return out


def status(sup: Supervisor, plan: Plan | None, config: ColoConfig, name: str) -> AgentStatus:
    """One agent's status. Raises KeyError for an agent not in the plan."""
    if name in sup.agents:
        return sup.agents[name].status()
    for u in plan.unplaced if plan else ():
        if u.agent == name:
            return left_out_status(config, u)
    raise KeyError(name)


def agent_for_action(sup: Supervisor, plan: Plan | None, name: str) -> Agent:
    """The supervised agent ``name``. Raises PlanError for an agent the plan left out, KeyError for one it
    does not have."""
    if name in sup.agents:
        return sup.agents[name]
    for u in plan.unplaced if plan else ():
        if u.agent == name:
            raise PlanError(f"agent {name!r} is not placed on any GPU of this node: {u.reason}")
    raise KeyError(name)
