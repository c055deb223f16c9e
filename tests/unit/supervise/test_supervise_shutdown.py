"""colo.supervise.shutdown on a fake clock and runner: ``colo down`` stops every agent with its stop signal,
waits at most the longest ``stop_wait`` (plus a grace), SIGKILLs whatever is left and says so in one event."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from colo.clock import FakeClock
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner, LaunchSpec
from colo.spec.config import HealthCheck
from colo.supervise.agent import AgentSetup
from colo.supervise.logs import AgentLogs
from colo.supervise.policy import RestartRules
from colo.supervise.shutdown import GRACE_SECS, stop_agents
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState
from colo.supervise.store import Store
from colo.supervise.supervisor import Supervisor


def _setup(name: str, stop_wait_secs: float) -> AgentSetup:
    launch = LaunchSpec((f"{name}-bin",), (), None, "local:0", None, 1024)
    return AgentSetup(name, launch, HealthCheck(type="none", start_secs=1), RestartRules(stop_wait_secs=stop_wait_secs))


def _running(tmp_path: Path, waits: dict[str, float]) -> tuple[Supervisor, FakeRunner, FakeClock, Store]:
    clock, runner, store = FakeClock(), FakeRunner(), Store(tmp_path / "colo.db")
    sup = Supervisor(
        runner=runner, probe=lambda check: HealthResult(True, "ok"), clock=clock, store=store,
        logs=AgentLogs(tmp_path / "logs"),
    )
    for name, wait in waits.items():
        sup.add(_setup(name, wait)).start()
    for _ in range(6):
        clock.advance(0.5)
        sup.tick()
    assert {s.name: s.state for s in sup.statuses()} == dict.fromkeys(waits, AgentState.RUNNING)
    return sup, runner, clock, store


def _down_events(store: Store) -> list[str]:
    return [e.message for e in store.events(0, 1000) if e.kind is EventKind.STOPPED and e.agent is None]


def test_agents_that_obey_their_stop_signal_stop_without_sigkill(tmp_path: Path) -> None:
    sup, runner, clock, store = _running(tmp_path, {"a": 5.0, "b": 5.0})
    started = clock.monotonic()
    assert stop_agents(sup, runner, threading.RLock(), clock) == []
    assert sup.all_down() and {s.state for s in sup.statuses()} == {AgentState.STOPPED}
    assert all(p.signals == [int(signal.SIGTERM)] for p in runner.spawned)
    assert clock.monotonic() - started < 5.0  # no wait for stop_wait once all are down
    assert _down_events(store) == ["colo down: agents stopped"]


def test_an_agent_that_ignores_its_stop_signal_is_killed_at_the_deadline(tmp_path: Path) -> None:
    sup, runner, clock, store = _running(tmp_path, {"good": 30.0, "stubborn": 30.0})
    stubborn = sup.agent("stubborn").handle
    assert stubborn is not None
    runner.ignore_signals.add(stubborn.pid)
    started = clock.monotonic()
    assert stop_agents(sup, runner, threading.RLock(), clock, timeout_secs=2.0) == ["stubborn"]
    assert runner.procs[stubborn.pid].signals == [int(signal.SIGTERM), int(signal.SIGKILL)]
    assert sup.all_down() and runner.alive() == []
    assert 2.0 <= clock.monotonic() - started < 2.0 + GRACE_SECS + 1.0  # the deadline, then one pass more
    assert _down_events(store) == ["colo down: agents stopped (SIGKILL: stubborn)"]


def test_the_default_deadline_is_the_longest_stop_wait_plus_the_grace(tmp_path: Path) -> None:
    sup, runner, clock, store = _running(tmp_path, {"quick": 1.0, "slow": 3.0})
    pids = [a.handle.pid for a in sup.agents.values() if a.handle is not None]
    runner.ignore_signals.update(pids)  # both ignore SIGTERM: each agent SIGKILLs after its own stop_wait
    started = clock.monotonic()
    assert stop_agents(sup, runner, threading.RLock(), clock) == []  # down before 3 + GRACE_SECS
    assert 3.0 <= clock.monotonic() - started < 3.0 + GRACE_SECS
    assert all(runner.procs[p].signals[-1] == int(signal.SIGKILL) for p in pids)
    assert _down_events(store) == ["colo down: agents stopped"]


def test_no_agents_is_a_quick_down(tmp_path: Path) -> None:
    sup, runner, clock, store = _running(tmp_path, {})
    started = clock.monotonic()
    assert stop_agents(sup, runner, threading.RLock(), clock) == []
    assert clock.monotonic() == started and _down_events(store) == ["colo down: agents stopped"]
