"""An agent's start phases: counted from the runner's request, one log line at the first ready /health, and
the runners' launch variables (fork or spawn, and why not fork)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.launch.fork_runner import FORKED, ForkRunner
from colo.launch.runner import LaunchSpec, ProcessRunner
from colo.modelserver.startup import LAUNCHED_BY_VAR, REQUESTED_VAR, StartPhases, launch_env
from testkit import wait_for


def test_phases_from_the_request_to_the_first_ready_health(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=500.0)
    env = launch_env("fork", 499.99)  # requested 10 ms before main() ran
    phases = StartPhases(env, clock=clock)
    clock.advance(0.002)
    phases.mark("imports")
    clock.advance(0.02)
    phases.mark("setup")
    clock.advance(0.25)
    phases.mark("cuda_context")
    clock.advance(0.5)
    phases.mark("weights", 0.3)  # measured elsewhere: the rest of the load is the warm-up
    phases.mark("warmup", 0.2)
    assert phases.on_health(ready=False)["complete"] is False  # loading: nothing logged yet
    clock.advance(0.05)
    with caplog.at_level(logging.INFO, logger="colo.modelserver"):
        body = phases.on_health(ready=True)
        clock.advance(1.0)
        again = phases.on_health(ready=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("start phases:")]
    assert lines == [
        "start phases: fork 0.01s imports 0.00s setup 0.02s cuda_context 0.25s weights 0.30s warmup 0.20s"
        " health_ready 0.05s total 0.83s"
    ]
    assert body["launched_by"] == "fork" and body["complete"] is True
    assert body["phases_secs"] == {
        "fork": 0.01, "imports": 0.002, "setup": 0.02, "cuda_context": 0.25, "weights": 0.3, "warmup": 0.2,
        "health_ready": 0.05,
    }
    assert body["total_secs"] == pytest.approx(0.832) and again["total_secs"] == body["total_secs"]  # ended


def test_without_a_request_time_the_phases_start_at_main() -> None:
    clock = FakeClock(start=10.0)
    for env in ({}, {REQUESTED_VAR: "soon"}, {REQUESTED_VAR: "20.0"}, {REQUESTED_VAR: "-9000.0"}):
        phases = StartPhases(env, clock=clock)
        clock.advance(1.0)
        phases.mark("imports")
        assert phases.as_dict()["phases_secs"] == {"imports": 1.0} and phases.launched_by == "unknown"
        assert phases.line() == "start phases: imports 1.00s total 1.00s"


def py(code: str, env: dict[str, str] | None = None) -> LaunchSpec:
    return LaunchSpec((sys.executable, "-c", code), tuple(sorted((env or {}).items())), None, None, None, 0)


SHOW = f"import os, time; print(os.environ['{LAUNCHED_BY_VAR}'], time.monotonic() - float(os.environ['{REQUESTED_VAR}']))"


def test_runners_tell_the_agent_how_and_when_it_was_launched(tmp_path: Path) -> None:
    """Forked: ``fork`` and the handle says so; not forkable by env: ``spawn``, and the handle says why;
    spawned by ProcessRunner: ``spawn``. The request time is on the agent's own monotonic clock."""
    runner = ForkRunner(forkable=lambda spec: spec.argv[1] == "-c", preload=False, ready_wait_secs=30)
    try:
        forked = runner.spawn(py(SHOW), tmp_path / "f.log")
        spawned = runner.spawn(py(SHOW, {"PYTHONPATH": "/elsewhere"}), tmp_path / "s.log")
        spawner = ProcessRunner()
        plain = spawner.spawn(py(SHOW), tmp_path / "p.log")
        assert forked.launch == FORKED
        assert spawned.launch == "spawned: env sets PYTHONPATH (read at process start)"
        assert plain.launch == "spawned"
        for name, how in (("f", "fork"), ("s", "spawn"), ("p", "spawn")):
            log = tmp_path / f"{name}.log"
            # The whole line: an unbuffered child (PYTHONUNBUFFERED in the environment) writes print's parts one by one.
            wait_for(lambda log=log: log.read_text().endswith("\n"), 30)
            said, secs = log.read_text().split()
            assert said == how and 0.0 <= float(secs) < 30.0, log.read_text()
        for r, handle in ((runner, forked), (runner, spawned), (spawner, plain)):
            assert wait_for(lambda r=r, handle=handle: r.poll(handle), 30) is not None  # reaped
    finally:
        runner.close()


def test_the_started_event_says_how_the_agent_was_launched(tmp_path: Path) -> None:
    from colo.clock import FakeClock as Clock
    from colo.launch.health import HealthResult
    from colo.launch.runner import FakeRunner
    from colo.spec.config import HealthCheck
    from colo.supervise.agent import Agent, AgentSetup
    from colo.supervise.policy import RestartRules

    runner = FakeRunner()
    events: list[str] = []
    setup = AgentSetup(
        "a", py("pass"), HealthCheck(type="none", start_secs=1), RestartRules(max_retries=3, backoff_initial_secs=1)
    )
    agent = Agent(
        setup,
        runner=runner,
        probe=lambda check: HealthResult(True),
        clock=Clock(),
        log_path=tmp_path / "a.log",
        on_event=lambda kind, message: events.append(message),
        on_change=lambda a: None,
    )
    runner.launch = "spawned: the launcher is still importing"
    agent.start()
    assert events[-1] == f"started, pid {runner.last().handle.pid}, spawned: the launcher is still importing"
