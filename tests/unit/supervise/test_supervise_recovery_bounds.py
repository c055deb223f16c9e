"""Issue 21, the bounds of MPS recovery, on CPU (fake MPS, fake NVML, fake processes, a fake clock): faults
during recovery end — in every agent RUNNING under MPS, or in FATAL with one event that says why and what to
check — never in a recovery that goes on forever, nor in a degraded state that looks healthy.

- the agent's pieces: a ready gate that holds a healthy agent in STARTING, and ``give_up`` from every state.
"""

from __future__ import annotations

from pathlib import Path

from test_supervise_shared_fate import lone_agent

from colo.supervise.state import AgentState

S = AgentState


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


