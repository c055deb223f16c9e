"""The agent state machine on a fake clock and a fake runner: every transition, backoff, crash loop."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path
from typing import Any

import pytest

from colo.clock import FakeClock
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner, LaunchSpec
from colo.spec.config import HealthCheck
from colo.supervise.agent import Agent, AgentSetup
from colo.supervise.policy import RestartRules
from colo.supervise.snapshots import EventKind
from colo.supervise.state import ALLOWED, AgentState

S = AgentState


class Rig:
    """An agent wired to a fake clock, runner and probe, recording its events and states."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        health: HealthCheck | None = None,
        rules: RestartRules | None = None,
        argv: tuple[str, ...] = ("agent-bin",),
    ) -> None:
        self.clock = FakeClock()
        self.runner = FakeRunner()
        self.healthy = False
        self.probes = 0
        self.events: list[tuple[EventKind, str]] = []
        self.states: list[AgentState] = []
        launch = LaunchSpec(argv, (("A", "1"),), None, "local:0", "GPU-x", 1024)
        setup = AgentSetup(
            "a",
            launch,
            health or HealthCheck(type="none", start_secs=2),
            rules or RestartRules(max_retries=3, backoff_initial_secs=1, backoff_max_secs=4),
        )
        self.agent = Agent(
            setup,
            runner=self.runner,
            probe=self._probe,
            clock=self.clock,
            log_path=tmp_path / "a.log",
            on_event=lambda k, m: self.events.append((k, m)),
            on_change=lambda a: self.states.append(a.state),
        )

    def _probe(self, check: HealthCheck) -> HealthResult:
        self.probes += 1
        return HealthResult(self.healthy, "ok" if self.healthy else "HTTP 503")

    def step(self, secs: float = 0.0) -> AgentState:
        self.clock.advance(secs)
        self.agent.tick()
        return self.agent.state

    def pid(self) -> int:
        assert self.agent.handle is not None
        return self.agent.handle.pid

    def kinds(self) -> list[EventKind]:
        return [k for k, _ in self.events]


def http_rig(tmp_path: Path, **health: Any) -> Rig:
    """A started rig whose agent is probed over HTTP (``health``: the other HealthCheck fields)."""
    rig = Rig(tmp_path, health=HealthCheck(type="http", url="http://x/health", **health))
    rig.agent.start()
    return rig


def test_none_check_is_running_only_after_start_secs(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.agent.start()
    assert rig.agent.state == S.STARTING
    assert rig.step(1.9) == S.STARTING
    assert rig.step(0.2) == S.RUNNING
    assert rig.kinds() == [EventKind.STARTED, EventKind.READY]


def test_http_check_gates_running_and_startup_timeout_kills(tmp_path: Path) -> None:
    rig = http_rig(tmp_path, startup_timeout_secs=10, interval_secs=5)
    for _ in range(5):
        assert rig.step(1.0) == S.STARTING
    assert rig.probes >= 5  # probed every second while starting, not every interval
    assert rig.agent.last_error == "not ready: HTTP 503"
    pid = rig.pid()
    rig.step(6.0)  # past startup_timeout_secs: stop signal sent, still STARTING until it exits
    assert rig.runner.procs[pid].signals == [signal.SIGTERM]
    assert rig.step(0) == S.BACKOFF
    assert "not healthy after 10 s" in (rig.agent.last_error or "")


def test_http_ready_then_unhealthy_restarts(tmp_path: Path) -> None:
    rig = http_rig(tmp_path, interval_secs=5, failures_before_restart=2)
    rig.healthy = True
    assert rig.step(0) == S.RUNNING
    rig.healthy = False
    assert rig.step(5) == S.RUNNING  # one failure is tolerated
    pid = rig.pid()
    rig.step(5)  # second failure: killed
    assert EventKind.UNHEALTHY in rig.kinds()
    assert rig.step(0) == S.BACKOFF
    assert rig.runner.procs[pid].exit is not None
    rig.healthy = True
    assert rig.step(1.0) == S.STARTING  # backoff 1 s (first failure)
    assert rig.step(0) == S.RUNNING
    assert rig.agent.restarts == 1


def test_crash_loop_backoff_doubles_capped_then_fatal(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(policy="always", max_retries=3, backoff_initial_secs=1, backoff_max_secs=3))
    rig.agent.start()
    delays = []
    for _ in range(3):
        rig.runner.exit(rig.pid(), code=1)
        assert rig.step(0) == S.BACKOFF
        waited = 0.0
        while rig.agent.state == S.BACKOFF:
            rig.step(0.5)
            waited += 0.5
        delays.append(waited)
        assert rig.agent.state == S.STARTING
    assert delays == [1.0, 2.0, 3.0]  # 1, 2, then capped at 3 (not 4)
    rig.runner.exit(rig.pid(), code=1)
    assert rig.step(0) == S.FATAL
    assert rig.agent.last_error == "crash loop: failed 4 times in a row (max_retries 3); last: exit code 1"
    assert rig.kinds()[-1] == EventKind.FATAL
    rig.step(100)
    assert rig.agent.state == S.FATAL  # stays until a person acts
    rig.agent.start()
    assert rig.agent.state == S.STARTING and rig.agent.failures == 0


def test_stable_running_resets_failure_count(tmp_path: Path) -> None:
    rules = RestartRules(policy="always", max_retries=1, backoff_initial_secs=1, stable_secs=30)
    rig = Rig(tmp_path, rules=rules)
    rig.agent.start()
    rig.step(2)
    for _ in range(3):  # each crash comes after a long healthy run: never a crash loop
        rig.step(40)
        rig.runner.exit(rig.pid(), sig=signal.SIGKILL)
        assert rig.step(0) == S.BACKOFF
        rig.step(1)
        assert rig.step(2) == S.RUNNING
    assert rig.agent.restarts == 3


def test_on_failure_policy_exit_zero_is_exited(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(policy="on-failure"))
    rig.agent.start()
    rig.step(2)
    rig.runner.exit(rig.pid(), code=0)
    assert rig.step(0) == S.EXITED
    assert rig.agent.last_error is None
    rig.step(100)
    assert rig.agent.state == S.EXITED


def test_never_policy_failure_is_exited_with_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(policy="never"))
    rig.agent.start()
    rig.runner.exit(rig.pid(), sig=signal.SIGSEGV)
    assert rig.step(0) == S.EXITED
    assert rig.agent.last_error == "signal SIGSEGV"


def test_stop_signal_then_sigkill_after_stop_wait(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(stop_wait_secs=5, stop_signal=int(signal.SIGINT)))
    rig.agent.start()
    rig.step(2)
    pid = rig.pid()
    rig.runner.ignore_signals.add(pid)
    rig.agent.stop()
    assert rig.agent.state == S.STOPPING
    assert rig.step(4.9) == S.STOPPING
    rig.step(0.2)
    assert rig.runner.procs[pid].signals == [signal.SIGINT, signal.SIGKILL]
    assert rig.step(0) == S.STOPPED
    rig.step(100)
    assert rig.agent.state == S.STOPPED  # a stopped agent is not restarted by policy


def test_restart_stops_then_starts_with_new_setup(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.agent.start()
    rig.step(2)
    old = rig.pid()
    new_setup = AgentSetup(
        "a",
        LaunchSpec(("agent-bin",), (("A", "2"),), None, "local:0", "GPU-x", 2048),
        rig.agent.setup.health,
        rig.agent.setup.rules,
    )
    rig.agent.reconfigure(new_setup)
    assert rig.agent.status().limit_bytes == 1024  # running process keeps its spec until restarted
    rig.agent.restart("apply")
    rig.step(0)
    assert rig.agent.state == S.STARTING and rig.pid() != old
    assert rig.runner.procs[rig.pid()].spec.limit_bytes == 2048
    assert rig.agent.restarts == 1
    assert (EventKind.RESTARTED, f"restarted (apply), pid {rig.pid()}") in rig.events


def test_spawn_failure_is_fatal_not_an_exception(tmp_path: Path) -> None:
    rig = Rig(tmp_path, argv=("missing-bin",))
    rig.runner.fail_argv0.add("missing-bin")
    rig.agent.start()
    assert rig.agent.state == S.FATAL
    assert "cannot start 'missing-bin'" in (rig.agent.last_error or "")


def test_hold_keeps_exited_agent_in_backoff_without_counting(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(policy="always", max_retries=0))
    rig.agent.start()
    rig.step(2)
    rig.agent.hold = True
    rig.runner.exit(rig.pid(), code=1)
    assert rig.step(0) == S.BACKOFF  # max_retries 0 would be FATAL, but a held exit is not a failure
    assert rig.step(1000) == S.BACKOFF
    rig.agent.release()
    assert rig.step(0) == S.STARTING


def test_oom_noted_once_and_kept_in_last_error(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(policy="never"))
    rig.agent.start()
    rig.agent.note_oom("torch.OutOfMemoryError: CUDA out of memory")
    rig.agent.note_oom("torch.OutOfMemoryError: CUDA out of memory")
    assert rig.kinds().count(EventKind.OOM) == 1
    rig.runner.exit(rig.pid(), code=3)
    rig.step(0)
    assert rig.agent.last_error == "exit code 3 after out of memory"


def test_adopt_goes_straight_to_running(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    handle = rig.runner.spawn(rig.agent.setup.launch, tmp_path / "x.log")
    rig.agent.adopt(rig.runner.adopt(handle.pid, handle.start_time) or handle)
    assert rig.agent.state == S.RUNNING
    assert rig.kinds() == [EventKind.ADOPTED]


def test_every_recorded_transition_is_allowed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rules=RestartRules(policy="always", max_retries=2, backoff_initial_secs=1))
    rig.agent.start()
    rig.runner.exit(rig.pid(), code=1)
    rig.step(0)
    rig.step(1)
    rig.step(2)
    rig.agent.stop()
    rig.step(0)
    rig.agent.start()
    seen = [S.STOPPED, *rig.states]
    pairs = [(a, b) for a, b in itertools.pairwise(seen) if a != b]
    assert pairs, "no transitions recorded"
    for a, b in pairs:
        assert b in ALLOWED[a], f"{a} -> {b}"


@pytest.mark.parametrize(("n", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (60, 10.0)])
def test_backoff_secs(n: int, expected: float) -> None:
    assert RestartRules(backoff_initial_secs=1, backoff_max_secs=10).backoff_secs(n) == expected


def test_rules_from_spec_and_questions() -> None:
    from colo.spec.config import RestartPolicy

    rules = RestartRules.from_spec(RestartPolicy(policy="on-failure", max_retries=2, stop_signal="INT"))
    assert rules.stop_signal == signal.SIGINT
    assert rules.wants_restart(succeeded=False) and not rules.wants_restart(succeeded=True)
    assert not rules.gives_up(2) and rules.gives_up(3)
    assert RestartRules(policy="always").wants_restart(succeeded=True)
    assert not RestartRules(policy="never").wants_restart(succeeded=False)


def test_rules_from_spec_keep_every_field_of_the_spec() -> None:
    from colo.spec.config import RestartPolicy

    spec = RestartPolicy(
        policy="always", max_retries=7, backoff_initial_secs=2.5, backoff_max_secs=90, stop_wait_secs=4,
        stop_signal="QUIT",
    )
    rules = RestartRules.from_spec(spec, stable_secs=12.0)
    assert rules == RestartRules(
        policy="always",
        max_retries=7,
        backoff_initial_secs=2.5,
        backoff_max_secs=90.0,
        stop_wait_secs=4.0,
        stop_signal=int(signal.SIGQUIT),
        stable_secs=12.0,
    )


def test_a_failed_exit_keeps_the_last_line_of_the_log_until_running(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.agent.start()
    (tmp_path / "a.log").write_text(
        "--- colo: started, pid 4000\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
        "ModuleNotFoundError: No module named 'torch'\n\n--- colo: pid 4000 exited: exit code 1\n"
    )
    rig.runner.exit(rig.pid(), code=1)
    assert rig.step(0) == S.BACKOFF
    status = rig.agent.status()
    assert status.last_error == "exit code 1"
    assert status.last_error_line == "ModuleNotFoundError: No module named 'torch'"
    assert rig.step(1) == S.STARTING and rig.agent.status().last_error_line is not None  # still why it failed
    assert rig.step(2) == S.RUNNING
    assert rig.agent.status().last_error_line is None


def test_context_lost_while_running_restarts_at_once_uncounted_but_while_starting_backs_off(tmp_path: Path) -> None:
    from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST

    rig = Rig(tmp_path)
    rig.agent.start()
    assert rig.step(2.1) == S.RUNNING
    first = rig.pid()
    rig.runner.exit(first, code=EXIT_CONTEXT_LOST)
    assert rig.step(0) == S.STARTING and rig.pid() != first  # same tick: no backoff wait
    assert rig.agent.failures == 0 and rig.agent.restarts == 1
    assert rig.agent.last_exit is not None and rig.agent.last_exit.code == EXIT_CONTEXT_LOST
    rig.runner.exit(rig.pid(), code=EXIT_CONTEXT_LOST)  # never got ready: an ordinary failure
    assert rig.step(0) == S.BACKOFF and rig.agent.failures == 1


def test_an_unhealthy_process_is_also_sent_sigcont(tmp_path: Path) -> None:
    rig = http_rig(tmp_path, interval_secs=1, failures_before_restart=1)
    rig.healthy = True
    assert rig.step(0) == S.RUNNING
    pid = rig.pid()
    rig.runner.ignore_signals.add(pid)  # a stopped (SIGSTOP) process: nothing but SIGKILL ends it now
    rig.healthy = False
    rig.step(1)
    assert rig.runner.procs[pid].signals == [signal.SIGTERM, signal.SIGCONT]


def test_builtin_agents_are_probed_every_second_unless_the_user_said_otherwise() -> None:
    from colo.spec import load_config_text
    from colo.supervise.agent_setup import (
        BUILTIN_HEALTH_FAILURES,
        BUILTIN_HEALTH_INTERVAL_SECS,
        BUILTIN_HEALTH_TIMEOUT_SECS,
        _builtin_health,
    )

    cfg = load_config_text(
        "version: 1\ngpus: auto\nmodels: {m: {memory: 1GiB}}\nagents:\n"
        "  a: {models: [m], health: {type: http, url: 'http://127.0.0.1:9101/health'}}\n"
        "  b: {models: [m], health: {type: http, url: 'http://127.0.0.1:9102/health', interval_secs: 7}}\n",
        "t.yaml",
    )
    a = _builtin_health(cfg.agents["a"].health)
    b = _builtin_health(cfg.agents["b"].health)
    fast = (BUILTIN_HEALTH_INTERVAL_SECS, BUILTIN_HEALTH_TIMEOUT_SECS, BUILTIN_HEALTH_FAILURES)
    assert (a.interval_secs, a.timeout_secs, a.failures_before_restart) == fast
    assert (b.interval_secs, b.timeout_secs, b.failures_before_restart) == (7, *fast[1:])
