"""Taking over after an orchestrator restart: agents the store says were running are adopted (same pid AND
process start time) instead of launched twice; agents no longer in the plan are stopped and forgotten.

An adopted agent whose launch spec changed while colo was down is queued for a rolling restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from colo.launch.runner import LaunchSpec, ProcessHandle, Runner
from colo.spec.config import HealthCheck
from colo.supervise.agent import AgentSetup
from colo.supervise.policy import RestartRules
from colo.supervise.store import AgentRecord
from colo.supervise.supervisor import Supervisor


@dataclass
class TakeOver:
    """What :func:`take_over` did: agents started, adopted, and adopted ones to restart (setup, reason)."""

    started: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    roll: list[tuple[AgentSetup, str]] = field(default_factory=list)


def adoptable(runner: Runner, rec: AgentRecord | None) -> ProcessHandle | None:
    """A handle on ``rec``'s process when it still runs (same pid and start time), else None."""
    if rec is None or not rec.status.pid or rec.start_time is None:
        return None
    return runner.adopt(int(rec.status.pid), float(rec.start_time))


def retire_record(sup: Supervisor, runner: Runner, rec: AgentRecord) -> None:
    """An agent in the store but not in the plan: stop its process if it still runs, forget it."""
    handle = adoptable(runner, rec)
    if handle is None:
        sup.store.delete_agent(rec.status.name)
        return
    s = rec.status
    launch = LaunchSpec(("?",), (), None, s.gpu, s.gpu_uuid, s.limit_bytes)
    setup = AgentSetup(s.name, launch, HealthCheck(), RestartRules(policy="never"), s.priority)
    agent = sup.add(setup, restarts=s.restarts)
    agent.adopt(handle)
    sup.retire(s.name)


def take_over(
    sup: Supervisor, runner: Runner, records: Sequence[AgentRecord], setups: Sequence[AgentSetup]
) -> TakeOver:
    """Add ``setups`` to ``sup``: adopt the live process of each that ``records`` (the store, read before
    anything was added) knows, start the others; retire recorded agents not in ``setups``."""
    by_name = {r.status.name: r for r in records}
    wanted = {s.name for s in setups}
    for name, old in by_name.items():
        if name not in wanted:
            retire_record(sup, runner, old)
    done = TakeOver()
    for setup in setups:
        rec = by_name.get(setup.name)
        handle = adoptable(runner, rec)
        agent = sup.add(setup, restarts=rec.status.restarts if rec else 0)
        if handle is not None and rec is not None:
            agent.adopt(handle)
            done.adopted.append(setup.name)
            if rec.fingerprint != setup.launch.fingerprint():
                done.roll.append((setup, "configuration changed while colo was down"))
        else:
            agent.start("colo up")
            done.started.append(setup.name)
    return done
