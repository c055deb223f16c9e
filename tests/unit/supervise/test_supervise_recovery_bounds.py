"""Issue 21, the bounds of MPS recovery, on CPU (fake MPS, fake NVML, fake processes, a fake clock): faults
during recovery end — in every agent RUNNING under MPS, or in FATAL with one event that says why and what to
check — never in a recovery that goes on forever, nor in a degraded state that looks healthy.

- a daemon that cannot be restored: the recovery gives up after RESTORE_GIVE_UP_SECS, its agents FATAL;
- a relaunch that fails again and again: the recovery gives up after MAX_RECOVERY_ROUNDS;
- below each bound, everything recovers as before (the drills' recovery records unchanged);
- the agent's pieces: a ready gate that holds a healthy agent in STARTING, and ``give_up`` from every state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_supervise_orchestrator import uuid
from test_supervise_shared_fate import Gpu0, lone_agent

from colo.supervise.orchestrator import TICK_SECS
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
    assert (MAX_RECOVERY_ROUNDS, RESTORE_GIVE_UP_SECS) == (3, 60.0)


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
    ("drill", "seconds", "relaunch_secs"), [("server_died", 1.0, 1.0), ("daemon_died", 1.0, 1.0), ("second_fault", 1.5, 1.5)]
)
def test_the_drills_recover_in_the_same_time_as_before_the_bounds(
    tmp_path: Path, drill: str, seconds: float, relaunch_secs: float
) -> None:
    """The bounds add no wait to an ordinary recovery: these are the figures of the same fake drills on the
    tree before them (f2edf42): the stop seen within the tick, no wait, a relaunch as long as the agents' start."""
    g = Gpu0(tmp_path)
    if drill == "daemon_died":
        g.w.mps.kill_daemon(g.pipe0)
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


