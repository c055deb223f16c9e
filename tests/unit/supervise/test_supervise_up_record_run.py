"""colo.supervise.up_record and colo.supervise.up_run: what ``colo up`` records in the store for ``colo status``,
the detached parent's waits (for the child to hold the state dir, for its first outcome, each bounded and
ending in an error that quotes the child's log), the first-outcome watch, and the foreground run (signals
stop it; the API's stop and the store's ``api_url`` are cleaned up)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.errors import ColoError, SupervisorError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner
from colo.plan.types import Unplaced
from colo.spec import load_config_text
from colo.supervise.first_outcome import AgentOutcome, Outcome, UpOutcome
from colo.supervise.lockfile import StateLock
from colo.supervise.orchestrator import Orchestrator
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState
from colo.supervise.statedir import StateDirPaths
from colo.supervise.store import Store
from colo.supervise.up_record import (
    UpResult,
    daemon_events,
    forget_orchestrator,
    record_left_out,
    record_mps,
    record_orchestrator,
)
from colo.supervise.up_run import (
    DETACH_START_SECS,
    FIRST_OUTCOME_KEY,
    DetachedLog,
    run_foreground,
    wait_detached_outcome,
    wait_until_held,
    watch_first_outcome,
)
from testkit import short_state_dir

CFG = """
version: 1
gpus: auto
policy: {mps: off}
api: {host: 127.0.0.1, port: 8765}
models:
  small: {memory: 1GiB}
agents:
  a: {models: [small], command: [bin-a], health: {type: none, start_secs: 1}}
  b: {models: [small], command: [bin-b], health: {type: none, start_secs: 1}}
"""


@pytest.fixture
def state() -> Iterator[Path]:
    root = short_state_dir()  # short: MPS pipe dirs live under it
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- up_record ------------------------------------------------------------------------------------------


def test_up_result_to_dict_names_left_out_agents_with_reasons() -> None:
    result = UpResult(["a"], ["b"], [Unplaced("c", "low", 1024, "no room")], ["GPU-1"], [], True, ["w"])
    assert result.to_dict() == {
        "started": ["a"], "adopted": ["b"], "left_out": [{"agent": "c", "priority": "low", "reason": "no room"}],
        "daemons_started": ["GPU-1"], "daemons_adopted": [], "mps": True, "warnings": ["w"],
    }


def test_daemon_events_one_per_daemon_started_or_adopted() -> None:
    seen: list[tuple[EventKind, str | None, str, str | None]] = []
    daemon_events(lambda kind, agent, message, gpu: seen.append((kind, agent, message, gpu)), ["G1", "G2"], ["G3"])
    assert seen == [
        (EventKind.DAEMON, None, "started the MPS daemon of G1", "G1"),
        (EventKind.DAEMON, None, "started the MPS daemon of G2", "G2"),
        (EventKind.DAEMON, None, "adopted the running MPS daemon of G3", "G3"),
    ]


def test_the_orchestrator_record_follows_up_apply_and_down(tmp_path: Path) -> None:
    store = Store(tmp_path / "colo.db")
    cfg = load_config_text(CFG, "t.yaml")
    record_mps(store, ["G1"])  # no orchestrator recorded: nothing to update
    assert store.get_meta("orchestrator", None) is None
    record_orchestrator(store, tmp_path, tmp_path / "colo.yaml", cfg, ["G1"])
    assert store.get_meta("orchestrator") == {
        "pid": os.getpid(), "state_dir": str(tmp_path), "config_path": str(tmp_path / "colo.yaml"), "mps": True,
        "mps_gpus": ["G1"], "api": {"host": "127.0.0.1", "port": 8765},
    }
    record_mps(store, [])  # an apply switched every GPU to time-slicing
    meta = store.get_meta("orchestrator")
    assert meta["mps"] is False and meta["mps_gpus"] == [] and meta["pid"] == os.getpid()
    forget_orchestrator(store)
    assert store.get_meta("orchestrator", None) is None
    record_orchestrator(store, tmp_path, None, cfg, [])
    assert store.get_meta("orchestrator")["config_path"] is None


def test_left_out_agents_are_kept_for_colo_status(tmp_path: Path) -> None:
    store = Store(tmp_path / "colo.db")
    record_left_out(store, [Unplaced("c", "low", 2048, "no room"), Unplaced("d", "high", 1, "pinned GPU missing")])
    assert store.get_meta("left_out") == [
        {"agent": "c", "priority": "low", "limit_bytes": 2048, "reason": "no room"},
        {"agent": "d", "priority": "high", "limit_bytes": 1, "reason": "pinned GPU missing"},
    ]
    record_left_out(store, [])
    assert store.get_meta("left_out") == []


# --- the detached parent's waits ------------------------------------------------------------------------


def test_detached_log_reads_only_what_this_run_wrote(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.log"
    path.write_text("error: from an earlier run\n")
    log = DetachedLog(path, path.stat().st_size)
    assert log.tail() == "" and not log.child_failed()
    with open(path, "a") as fh:
        fh.write("planning...\n" + "x" * 5000 + "\nerror: no GPU\n")
    assert log.child_failed() and log.tail(14) == "error: no GPU\n"
    assert DetachedLog(tmp_path / "missing.log", 0).tail() == ""


def test_wait_until_held_returns_the_pid_of_the_child_holding_the_state_dir(state: Path) -> None:
    paths = StateDirPaths(state)
    lock = StateLock(paths)
    lock.acquire()
    lock.write_pid(4242)
    try:
        assert wait_until_held(paths, DetachedLog(state / "o.log", 0), FakeClock()) == 4242
    finally:
        lock.release()


def test_wait_until_held_stops_at_the_childs_error_or_at_the_deadline(state: Path) -> None:
    paths = StateDirPaths(state)
    log_path = state / "o.log"
    log_path.write_text("error: the configuration does not fit\n")
    clock = FakeClock()
    with pytest.raises(SupervisorError, match="does not fit") as err:
        wait_until_held(paths, DetachedLog(log_path, 0), clock)
    assert "did not come up" in str(err.value) and clock.monotonic() == 1000.0  # at once, no wait
    quiet = FakeClock()
    with pytest.raises(SupervisorError, match="did not come up"):
        wait_until_held(paths, DetachedLog(log_path, log_path.stat().st_size), quiet)
    assert quiet.monotonic() - 1000.0 >= DETACH_START_SECS  # waited the whole bound, on the clock given


def _outcome() -> UpOutcome:
    return UpOutcome((AgentOutcome("a", Outcome.RUNNING, AgentState.RUNNING, 0),), 1.5)


def test_wait_detached_outcome_reads_the_childs_record(state: Path) -> None:
    paths = StateDirPaths(state)
    cfg = load_config_text(CFG, "t.yaml")
    lock = StateLock(paths)
    lock.acquire()
    lock.write_pid(4242)
    store = Store(paths.db)
    store.set_meta(FIRST_OUTCOME_KEY, {"pid": 1, **_outcome().to_dict()})  # an earlier child's: not this one's
    lines: list[str] = []
    clock = FakeClock()

    def progress(text: str, secs: float) -> None:
        lines.append(text)
        if len(lines) == 2:  # the child records its outcome while the parent waits
            store.set_meta(FIRST_OUTCOME_KEY, {"pid": 4242, **_outcome().to_dict()})

    try:
        got = wait_detached_outcome(paths, cfg, 4242, DetachedLog(state / "o.log", 0), progress, clock)
    finally:
        lock.release()
    assert got == _outcome() and lines[0] == "0 of 2 agents RUNNING" and len(lines) == 3


def test_wait_detached_outcome_fails_when_the_child_stops(state: Path) -> None:
    paths = StateDirPaths(state)
    Store(paths.db)
    (state / "o.log").write_text("error: MPS daemon would not start\n")
    with pytest.raises(SupervisorError, match="pid 4242\\) stopped") as err:
        wait_detached_outcome(
            paths, load_config_text(CFG, "t.yaml"), 4242, DetachedLog(state / "o.log", 0), lambda t, s: None, FakeClock()
        )
    assert "MPS daemon would not start" in str(err.value)


# --- the foreground run and the first-outcome watch -----------------------------------------------------


def _orchestrator(state: Path, clock: FakeClock, runner: FakeRunner) -> Orchestrator:
    return Orchestrator(
        load_config_text(CFG, "t.yaml"), state_dir=state, gpu_backend=FakeGpuBackend([fake_gpu(0)]),
        runner=runner, probe=lambda c: HealthResult(True, "ok"), clock=clock, fault_wait_secs=1.0,
    )


def test_the_watch_reports_and_records_the_first_outcome(state: Path) -> None:
    clock, runner = FakeClock(), FakeRunner()
    orch = _orchestrator(state, clock, runner)
    orch.up()
    try:
        for _ in range(4):
            clock.advance(0.5)
            orch.tick()
        reported: list[UpOutcome] = []
        failures: list[ColoError] = []
        stop = threading.Event()
        watch_first_outcome(orch, ["a", "b"], stop, progress=lambda t, s: None, report=reported.append,
                            failed=failures.append)
        assert not failures and len(reported) == 1 and reported[0].all_running
        assert [a.name for a in reported[0].agents] == ["a", "b"]
        assert orch.store.get_meta(FIRST_OUTCOME_KEY) == {"pid": os.getpid(), **reported[0].to_dict()}
        # Stopped before the outcome: nothing reported, nothing recorded.
        orch.store.delete_meta(FIRST_OUTCOME_KEY)
        stop.set()
        watch_first_outcome(orch, ["a", "b"], stop, progress=lambda t, s: None, report=reported.append,
                            failed=failures.append)
        assert len(reported) == 1 and orch.store.get_meta(FIRST_OUTCOME_KEY, None) is None
    finally:
        orch.down()


@pytest.fixture
def handlers() -> Iterator[None]:
    """run_foreground installs process-wide signal handlers: put the test runner's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@pytest.mark.usefixtures("handlers")
def test_run_foreground_runs_until_sigterm_then_downs_and_stops_the_api(state: Path) -> None:
    clock, runner = FakeClock(), FakeRunner()
    made: list[Orchestrator] = []
    calls: list[str] = []

    def orch_for() -> Orchestrator:
        made.append(_orchestrator(state, clock, runner))
        return made[0]

    def started(orch: Orchestrator, result: object) -> Callable[[], None]:
        orch.store.set_meta("api_url", "http://127.0.0.1:8765")
        orch.store.set_meta(FIRST_OUTCOME_KEY, {"pid": 1})  # an earlier run's outcome: dropped before the watch
        calls.append("started")
        return lambda: calls.append("api stopped")

    def watch(orch: Orchestrator, result: object, stop: threading.Event) -> None:
        calls.append(f"watch sees first outcome {orch.store.get_meta(FIRST_OUTCOME_KEY, None)}")
        os.kill(os.getpid(), signal.SIGTERM)  # `kill <pid>`: the handler ends the loop

    result = run_foreground(orch_for, None, started=started, watch=watch)
    assert result.started == ["a", "b"] and result.mps is False
    assert calls == ["started", "watch sees first outcome None", "api stopped"]
    store = Store(StateDirPaths(state).db)
    assert store.get_meta("api_url", None) is None and store.get_meta("orchestrator", None) is None
    assert runner.alive() == [] and len(runner.spawned) == 2  # down stopped both agents
