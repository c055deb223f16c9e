"""colo.supervise.rollout and colo.supervise.roster on a fake clock and runner: a new plan retires, starts,
queues restarts for changed agents only and reconfigures the rest in place; a plan that leaves out an agent
above ``low`` is refused; the roster lists supervised and left-out agents and says which an action may touch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.errors import DoesNotFitError, PlanError
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner, LaunchSpec
from colo.plan import inventory_slots, plan
from colo.plan.types import Plan, Unplaced
from colo.spec import load_config_text
from colo.spec.config import ColoConfig, HealthCheck
from colo.supervise import roster
from colo.supervise.agent import AgentSetup
from colo.supervise.logs import AgentLogs
from colo.supervise.policy import RestartRules
from colo.supervise.rollout import refuse_left_out, roll_out
from colo.supervise.state import AgentState
from colo.supervise.store import Store
from colo.supervise.supervisor import Supervisor

S = AgentState


def _setup(name: str, limit_bytes: int = 1024, argv0: str | None = None, priority: str = "medium") -> AgentSetup:
    launch = LaunchSpec((argv0 or f"{name}-bin",), (), None, "local:0", None, limit_bytes)
    return AgentSetup(name, launch, HealthCheck(type="none", start_secs=1), RestartRules(stop_wait_secs=2),
                      priority=priority)


class Node:
    def __init__(self, tmp_path: Path) -> None:
        self.clock, self.runner = FakeClock(), FakeRunner()
        self.sup = Supervisor(
            runner=self.runner, probe=lambda check: HealthResult(True, "ok"), clock=self.clock,
            store=Store(tmp_path / "colo.db"), logs=AgentLogs(tmp_path / "logs"),
        )

    def run(self, secs: float) -> None:
        for _ in range(int(secs / 0.5)):
            self.clock.advance(0.5)
            self.sup.tick()

    def pid(self, name: str) -> int:
        handle = self.sup.agent(name).handle
        assert handle is not None
        return handle.pid


def test_roll_out_stops_starts_restarts_changed_and_keeps_the_rest(tmp_path: Path) -> None:
    node = Node(tmp_path)
    for name in ("keep", "grow", "gone"):
        node.sup.add(_setup(name)).start()
    node.run(3)
    pids = {n: node.pid(n) for n in ("keep", "grow")}
    new = {"keep": _setup("keep", priority="high"), "grow": _setup("grow", 2048), "new": _setup("new")}
    result = roll_out(node.sup, new, "apply")
    assert result.to_dict() == {
        "restarted": ["grow"], "started": ["new"], "stopped": ["gone"], "unchanged": ["keep"], "left_out": []
    }
    assert node.sup.agent("keep").setup.priority == "high"  # taken in place: same launch, no new process
    node.run(10)
    assert {s.name: s.state for s in node.sup.statuses()} == {"keep": S.RUNNING, "grow": S.RUNNING, "new": S.RUNNING}
    assert node.pid("keep") == pids["keep"] and node.pid("grow") != pids["grow"]
    assert node.sup.agent("grow").status().limit_bytes == 2048
    reasons = [e.message for e in node.sup.store.events(0, 1000, agent="grow")]
    assert any("apply: limit" in m for m in reasons), reasons  # the restart names why and what changed
    assert "gone" not in node.sup.agents


def test_roll_out_to_the_same_setups_changes_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.sup.add(_setup("a")).start()
    node.run(3)
    before = node.pid("a")
    result = roll_out(node.sup, {"a": _setup("a")}, "reload")
    assert result.unchanged == ["a"] and not (result.restarted or result.started or result.stopped)
    node.run(5)
    assert node.pid("a") == before and len(node.runner.spawned) == 1


def test_a_left_out_agent_above_low_priority_is_refused_with_every_name() -> None:
    refuse_left_out([Unplaced("spare", "low", 1024, "no room")])  # low: allowed to be left out
    with pytest.raises(DoesNotFitError) as err:
        refuse_left_out([Unplaced("a", "high", 1024, "needs 6 GiB"), Unplaced("s", "low", 1, "x"),
                         Unplaced("b", "medium", 1024, "no GPU")])
    assert err.value.agents == ("a", "b") and "nothing was changed" in str(err.value)
    assert "a (high): needs 6 GiB" in str(err.value) and "b (medium): no GPU" in str(err.value)
    assert err.value.hint


CFG = """
version: 1
gpus: [{memory: 4GiB}]
models:
  small: {memory: 1GiB}
  huge: {memory: 8GiB}
agents:
  a: {models: [small], command: [bin-a]}
  big: {models: [huge], command: [bin-big], priority: low}
"""


def _plan() -> tuple[ColoConfig, Plan]:
    cfg = load_config_text(CFG, "t.yaml")
    p = plan(cfg, inventory_slots(cfg))
    assert [u.agent for u in p.unplaced] == ["big"]
    return cfg, p


def test_roster_lists_supervised_then_left_out_agents(tmp_path: Path) -> None:
    cfg, p = _plan()
    node = Node(tmp_path)
    node.sup.add(_setup("a")).start()
    node.run(2)
    listed = roster.statuses(node.sup, p, cfg)
    assert [(s.name, s.state) for s in listed] == [("a", S.RUNNING), ("big", S.STOPPED)]
    big = listed[1]
    assert big.pid is None and big.gpu is None and big.priority == "low" and big.models == ("huge",)
    assert big.last_error is not None and big.last_error.startswith("left out: ")
    assert big.limit_bytes == p.unplaced[0].limit_bytes
    assert roster.status(node.sup, p, cfg, "big") == big
    assert roster.status(node.sup, p, cfg, "a").state is S.RUNNING
    with pytest.raises(KeyError):
        roster.status(node.sup, p, cfg, "nobody")
    # Without a plan (none made yet) only the supervised agents are listed.
    assert [s.name for s in roster.statuses(node.sup, None, cfg)] == ["a"]


def test_a_supervised_agent_is_listed_once_even_if_the_plan_left_it_out(tmp_path: Path) -> None:
    cfg, p = _plan()
    node = Node(tmp_path)
    node.sup.add(_setup("big")).start()  # still running from before the plan that leaves it out
    assert [s.name for s in roster.statuses(node.sup, p, cfg)] == ["big"]


def test_an_action_acts_on_supervised_agents_only(tmp_path: Path) -> None:
    cfg, p = _plan()
    node = Node(tmp_path)
    node.sup.add(_setup("a"))
    assert roster.agent_for_action(node.sup, p, "a") is node.sup.agent("a")
    with pytest.raises(PlanError, match="not placed on any GPU"):
        roster.agent_for_action(node.sup, p, "big")
    with pytest.raises(KeyError):
        roster.agent_for_action(node.sup, p, "nobody")
    with pytest.raises(KeyError):
        roster.agent_for_action(node.sup, None, "big")
    # A left-out agent the config no longer names still gets a status (no models).
    gone = replace(p, unplaced=(Unplaced("old", "low", 1, "removed"),))
    assert roster.status(node.sup, gone, cfg, "old").models == ()
