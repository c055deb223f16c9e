"""Issue 21, the bounds of MPS recovery, on CPU (fake MPS, fake NVML, fake processes, a fake clock): faults
during recovery end — in every agent RUNNING under MPS, or in FATAL with one event that says why and what to
check — never in a recovery that goes on forever, nor in a degraded state that looks healthy.

- an agent that keeps coming back outside MPS: FATAL on its third finding, never RUNNING meanwhile;
- a daemon that cannot be restored: the recovery gives up after RESTORE_GIVE_UP_SECS, its agents FATAL;
- a relaunch that fails again and again: the recovery gives up after MAX_RECOVERY_ROUNDS;
- below each bound, everything recovers as before.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_supervise_orchestrator import World, agent, config, uuid
from test_supervise_shared_fate import Gpu0, lone_agent

from colo.gpu.mps.env import PIPE_DIRECTORY
from colo.gpu.nvml import ClientProcess
from colo.supervise.orchestrator import TICK_SECS
from colo.supervise.recovery.membership import OUTSIDE_PLAN_FINDINGS, Finding, OutsidePlan
from colo.supervise.recovery.mps_recovery import (
    ALLOWED,
    MAX_RECOVERY_ROUNDS,
    RESTORE_GIVE_UP_SECS,
    Recovery,
    RecoveryPhase,
    RecoveryTrigger,
)
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState

S = AgentState
TOKEN = "t" * 32


def fatal_events(g: Gpu0) -> list[tuple[str | None, str]]:
    return [(e.agent, e.message) for e in g.orch.events() if e.kind == EventKind.FATAL]


def test_the_bounds_are_transitions_the_tables_allow() -> None:
    from colo.supervise.state import ALLOWED as AGENT_ALLOWED

    assert RecoveryPhase.DONE in ALLOWED[RecoveryPhase.WAITING]  # gave up
    assert S.FATAL in AGENT_ALLOWED[S.STOPPED]  # stopped by the recovery that gave up on it
    assert (OUTSIDE_PLAN_FINDINGS, MAX_RECOVERY_ROUNDS, RESTORE_GIVE_UP_SECS) == (3, 3, 60.0)


def test_an_agent_that_keeps_coming_back_outside_mps_goes_fatal_and_is_never_running_meanwhile(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    from colo.api.app import create_app

    g = Gpu0(tmp_path)
    b_pid, c_pid = g.pid("b"), g.pid("c")
    g.plain = {"a"}  # every life of a is listed as a plain CUDA context (its command loses the pipe dir)
    lives: list[int] = []
    found_at = None
    began = g.w.clock.monotonic()
    for _ in range(120):
        g.run(TICK_SECS)
        st = g.orch.status("a")
        if st.pid is not None and st.pid not in lives:
            lives.append(st.pid)
        if found_at is None and any(e.agent == "a" and "not as planned" in e.message for e in g.orch.events()):
            found_at = len(g.states_seen)
        if st.state == S.FATAL:
            break
    assert found_at is not None and g.orch.status("a").state == S.FATAL, g.orch.status("a")
    assert g.w.clock.monotonic() - began < 30  # three findings, two relaunches: well under a minute
    # From the first finding on, a is never RUNNING: each relaunch waits STARTING for a reading to list it.
    assert all(s["a"] != S.RUNNING for s in g.states_seen[found_at:])
    assert len(lives) == OUTSIDE_PLAN_FINDINGS  # the first life and two relaunches, then no more
    ((who, said),) = fatal_events(g)
    assert who == "a" and f"found outside its plan {OUTSIDE_PLAN_FINDINGS} times" in said
    assert all(f"pid {pid}" in said for pid in lives) and said.count("a plain CUDA context (type C)") == 3
    assert "`colo logs a`" in said and "`colo mps env a" in said and "colo agent start a" in said
    assert f"{PIPE_DIRECTORY}={g.pipe0}" in said
    assert g.orch.status("a").last_error == said
    assert g.pid("b") == b_pid and g.pid("c") == c_pid  # the others are not touched
    assert g.orch.status("b").state == S.RUNNING and g.orch.status("c").state == S.RUNNING
    g.run(5)
    assert g.orch.status("a").state == S.FATAL and g.orch.status("a").pid is None  # and it stays so
    sup = g.orch.supervisor
    assert sup is not None and not sup.recoveries.active
    # What the API and `colo status --json` show: the state, the reason, the event.
    client = TestClient(create_app(g.orch, token=TOKEN))
    a = client.get("/agents/a").json()
    assert a["state"] == "FATAL" and "found outside its plan" in a["last_error"]
    events = client.get("/events").json()
    events = events.get("events", events) if isinstance(events, dict) else events
    assert any(e["kind"] == "fatal" and e["agent"] == "a" for e in events)
    # Fixed (its command keeps the pipe dir now), a person starts it: a fresh count, RUNNING once under MPS.
    g.plain = set()
    g.orch.start("a")
    g.run(4)
    g.all_running_under_mps()
    g.orch.down()


def test_an_agent_found_outside_mps_once_recovers_as_before(tmp_path: Path) -> None:
    """Below the bound: two findings (the agent came back outside MPS once) and then a client: RUNNING, no FATAL."""
    g = Gpu0(tmp_path)
    g.plain = {"a"}
    sup = g.orch.supervisor
    assert sup is not None
    for _ in range(40):
        g.run(TICK_SECS)
        rec = sup.recoveries.get(uuid(0))
        if rec is not None and rec.refaults == 1:
            break
    assert rec is not None and rec.refaults == 1 and rec.rounds == 1  # one agent: not a round of the GPU
    g.plain = set()  # the second relaunch comes back as an MPS client
    g.run(4)
    g.all_running_under_mps()
    assert not fatal_events(g)
    (done,) = sup.recovered
    assert done.ok and done.gave_up is None
    g.orch.down()


def test_a_time_sliced_agent_that_keeps_coming_back_as_an_mps_client_goes_fatal(tmp_path: Path) -> None:
    w = World(tmp_path)
    orch = w.orchestrator(config(agent("a", gpu=0), agent("b", gpu=0), agent("t", gpu=1), mps="auto"))
    orch.up()
    w.run(orch, 2)
    assert orch.status("t").mps_planned is False
    lives: list[int] = []
    seen: list[S] = []
    for _ in range(80):
        t = orch.status("t")
        if t.pid is not None and t.pid not in lives:
            lives.append(t.pid)
        rows = [ClientProcess(t.pid, 1, uuid(1), 100 << 20, True)] if t.pid is not None else []
        w.backend.set_processes(rows)  # every life of t is listed as an MPS client (type M+C)
        w.clock.advance(TICK_SECS)
        orch.tick()
        seen.append(orch.status("t").state)
        if seen[-1] == S.FATAL:
            break
    assert orch.status("t").state == S.FATAL and len(lives) == OUTSIDE_PLAN_FINDINGS
    first = next(i for i, s in enumerate(seen) if s != S.RUNNING)
    assert S.RUNNING not in seen[first:]  # never RUNNING again once found
    said = [e.message for e in orch.events() if e.kind == EventKind.FATAL and e.agent == "t"]
    assert len(said) == 1 and "planned time-sliced" in said[0] and "does not set" in said[0]
    assert orch.status("a").state == S.RUNNING and orch.status("b").state == S.RUNNING
    orch.down()


def test_a_daemon_that_cannot_be_restored_ends_the_recovery_in_fatal_with_one_event(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    c_pid = g.pid("c")
    g.w.mps.fail_start = "the GPU is busy"
    g.w.mps.kill_daemon(g.pipe0)
    sup = g.orch.supervisor
    assert sup is not None
    g.run(TICK_SECS)
    killed_at = g.w.clock.monotonic()
    rec = sup.recoveries.get(uuid(0))
    assert rec is not None and rec.trigger == RecoveryTrigger.DAEMON_DIED
    while uuid(0) in sup.recoveries and g.w.clock.monotonic() - killed_at < 90:
        g.run(TICK_SECS)
    waited = g.w.clock.monotonic() - killed_at
    assert RESTORE_GIVE_UP_SECS <= waited <= RESTORE_GIVE_UP_SECS + 2.0, waited
    # Its agents: FATAL, never started meanwhile (no MPS client without an answering daemon).
    for name in ("a", "b"):
        st = g.orch.status(name)
        assert st.state == S.FATAL and st.pid is None, st
        assert st.last_error and "MPS recovery of" in st.last_error and "could not be restarted" in st.last_error
    assert all(s["a"] != S.STARTING and s["b"] != S.STARTING for s in g.states_seen[-100:])
    ((who, said),) = fatal_events(g)  # one event for the GPU
    assert who is None and f"gave up the MPS fault recovery of {uuid(0)} [daemon_died]" in said
    assert "the GPU is busy" in said and "FATAL now: a, b" in said
    assert f"pipe dir {g.pipe0}" in said and "`colo logs a`" in said and "`colo agent start a`" in said
    (record,) = sup.recovered
    assert not record.ok and record.gave_up is not None and record.agents == ("a", "b")
    assert g.pid("c") == c_pid and g.orch.status("c").state == S.RUNNING  # the other GPU is not touched
    # Given up means given up: no recovery of that GPU starts again by itself (the probe still sees no daemon).
    tries = len([e for e in g.orch.events() if "could not restart" in e.message])
    g.run(10)
    assert uuid(0) not in sup.recoveries
    assert len([e for e in g.orch.events() if "could not restart" in e.message]) == tries
    assert {g.orch.status(n).state for n in ("a", "b")} == {S.FATAL}
    # The cause fixed, a person starts one agent: the GPU's daemon is restored first, then it runs under MPS.
    g.w.mps.fail_start = None
    g.orch.start("a")
    g.run(5)
    assert g.orch.status("a").state == S.RUNNING and g.orch.status("a").mps_client is True
    assert g.orch.status("b").state == S.FATAL  # nobody asked for b
    assert any("asked to run after its recovery gave up" in e.message for e in g.orch.events())
    g.orch.down()


def fail_relaunches(g: Gpu0, times: int) -> Recovery:
    """GPU 0's server dies; then, ``times`` times, its daemon dies again while the agents relaunch (each a new
    round of the same recovery). That recovery."""
    g.w.mps.kill_server(g.pipe0)
    rec = None
    for n in range(times):
        rec = g.run_until_relaunching()
        assert rec is not None and rec.rounds == n + 1, (n, rec)
        g.w.mps.kill_daemon(g.pipe0)  # the restored MPS fails again while the agents start
        g.run(TICK_SECS)
    assert rec is not None
    return rec


def test_a_recovery_whose_relaunch_keeps_failing_gives_up_after_its_rounds(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    rec = fail_relaunches(g, MAX_RECOVERY_ROUNDS)
    assert rec.ending is not None and "relaunch failed 3 times" in rec.ending
    g.run(5)
    sup = g.orch.supervisor
    assert sup is not None and uuid(0) not in sup.recoveries
    assert {g.orch.status(n).state for n in ("a", "b")} == {S.FATAL}
    ((who, said),) = fatal_events(g)
    assert who is None and "gave up the MPS fault recovery" in said and "[daemon_died]" in said
    (record,) = sup.recovered
    assert not record.ok and record.refaults == MAX_RECOVERY_ROUNDS
    assert g.orch.status("c").state == S.RUNNING
    g.orch.down()


def test_a_relaunch_that_fails_below_the_bound_still_recovers_fully(tmp_path: Path) -> None:
    """Two failures while the agents start (one more than the drill's second fault): three rounds, all RUNNING."""
    g = Gpu0(tmp_path)
    rec = fail_relaunches(g, MAX_RECOVERY_ROUNDS - 1)
    assert rec.ending is None
    g.run(6)
    (done,) = g.orch.supervisor.recovered
    assert done.ok and done.gave_up is None and done.refaults == MAX_RECOVERY_ROUNDS - 1
    assert not fatal_events(g)
    g.all_running_under_mps()
    g.orch.down()


@pytest.mark.parametrize(
    ("drill", "seconds", "relaunch_secs"),
    [("server_died", 1.0, 1.0), ("daemon_died", 1.0, 1.0), ("server_hung", 1.0, 1.0), ("second_fault", 1.5, 1.5)],
)
def test_the_drills_recover_in_the_same_time_as_before_the_bounds(
    tmp_path: Path, drill: str, seconds: float, relaunch_secs: float
) -> None:
    """The bounds add no wait to an ordinary recovery: these are the figures of the same fake drills on the
    tree before them (f2edf42): the stop seen within the tick, no wait, a relaunch as long as the agents' start."""
    g = Gpu0(tmp_path)
    if drill == "daemon_died":
        g.w.mps.kill_daemon(g.pipe0)
    elif drill == "server_hung":
        g.w.mps.signal(next(iter(g.w.mps.daemon_at(g.pipe0).servers)), signal.SIGSTOP)
    else:
        g.w.mps.kill_server(g.pipe0)
    if drill == "second_fault":
        assert g.run_until_relaunching() is not None
        g.w.mps.kill_daemon(g.pipe0)
    g.run(6)
    (done,) = g.orch.supervisor.recovered
    assert done.ok and done.seconds == seconds
    assert done.phase_secs == {
        RecoveryPhase.STOPPING: 0.0, RecoveryPhase.WAITING: 0.0, RecoveryPhase.RELAUNCHING: relaunch_secs
    }
    g.all_running_under_mps()
    g.orch.down()


# --- the pieces ---------------------------------------------------------------------------------------------


def test_the_ready_gate_holds_a_healthy_agent_in_starting_and_times_out_like_a_failed_check(tmp_path: Path) -> None:
    gate: list[str | None] = ["waiting for a GPU reading to list it as an MPS client"]
    a, clock, _runner = lone_agent(tmp_path, ready_gate=lambda agent: gate[0])
    a.start()
    for _ in range(4):
        clock.advance(0.5)
        a.tick()
    assert a.state == S.STARTING and a.last_error == gate[0]
    gate[0] = None
    a.tick()
    assert a.state == S.RUNNING and a.last_error is None
    gate[0] = "waiting"
    a.restart()  # the fake process ends on its stop signal
    a.tick()
    assert a.state == S.STARTING
    for _ in range(21):
        clock.advance(0.5)
        a.tick()
    # killed as not ready (the fake ends on its signal): a failure, as if its health check never passed
    assert a.state == S.BACKOFF and a.failures == 1
    assert a.last_error and "not ready after 10 s (waiting)" in a.last_error


def test_give_up_from_every_state(tmp_path: Path) -> None:
    a, clock, runner = lone_agent(tmp_path)
    a.give_up("never started")
    assert a.state == S.FATAL and a.last_error == "never started"  # STOPPED -> FATAL
    a.start()
    clock.advance(1.0)
    a.tick()
    assert a.state == S.RUNNING
    a.hold = True
    a.give_up("outside its plan")  # RUNNING -> STOPPING -> STOPPED -> FATAL
    assert a.state == S.STOPPING and a.giving_up and not a.hold
    a.tick()  # the fake process ended on its stop signal
    assert a.state == S.FATAL and a.last_error == "outside its plan" and not a.giving_up
    a.give_up("again")
    assert a.last_error == "outside its plan"  # FATAL already: its reason kept
    a.start()
    clock.advance(1.0)
    a.tick()
    a.give_up("gave up")
    a.start()  # a person's start while it stops overrides the give-up
    a.tick()
    assert a.state == S.STARTING and len(runner.spawned) == 3


def test_outside_plan_counts_findings_within_its_window() -> None:
    from colo.supervise.recovery.membership import OUTSIDE_PLAN_WINDOW_SECS

    o = OutsidePlan()
    assert o.note("a", Finding(0.0, 1, "x")) is None and "a" in o.suspects
    o.confirmed("a")
    assert "a" not in o.suspects
    assert o.note("a", Finding(OUTSIDE_PLAN_WINDOW_SECS + 1, 2, "x")) is None  # the first fell out of the window
    assert o.note("a", Finding(OUTSIDE_PLAN_WINDOW_SECS + 2, 3, "x")) is None
    found = o.note("a", Finding(OUTSIDE_PLAN_WINDOW_SECS + 3, 4, "x"))
    assert found is not None and [f.pid for f in found] == [2, 3, 4]
    assert o.note("a", Finding(OUTSIDE_PLAN_WINDOW_SECS + 4, 5, "x")) is None  # a fresh count after a give-up
    o.forget("a")
    assert "a" not in o.suspects
