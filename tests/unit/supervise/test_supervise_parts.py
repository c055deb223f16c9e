"""Store (SQLite), logs (rotation, scanning), health probes and the real process runner."""

from __future__ import annotations

import http.server
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.launch.health import HealthChecker
from colo.launch.runner import LaunchSpec, ProcessRunner
from colo.spec.config import HealthCheck
from colo.supervise.logs import AgentLogs, LogScanner, scan_text
from colo.supervise.snapshots import AgentStatus, EventKind
from colo.supervise.state import AgentState
from colo.supervise.store import AgentRecord, Store


def status(name: str, state: AgentState = AgentState.RUNNING, pid: int | None = 42) -> AgentStatus:
    return AgentStatus(name, state, pid, "local:0", "GPU-1", 1024, 512, "high", 2, models=("m1", "m2"))


def test_store_round_trips_agents_events_meta(tmp_path: Path) -> None:
    store = Store(tmp_path / "colo.db")
    store.save_agent(AgentRecord(status("a"), 123.5, "abc"))
    store.save_agent(AgentRecord(status("b", AgentState.FATAL, None)))
    store.save_agent(AgentRecord(status("a", AgentState.STOPPED, None), None, "abc"))  # replaces
    got = {r.status.name: r for r in store.agents()}
    assert got["a"].status == status("a", AgentState.STOPPED, None) and got["a"].fingerprint == "abc"
    assert got["b"].status.state == AgentState.FATAL and got["b"].status.models == ("m1", "m2")
    store.delete_agent("b")
    assert [r.status.name for r in store.agents()] == ["a"]

    for i in range(5):
        store.add_event(100.0 + i, EventKind.STARTED, "a", f"e{i}", "GPU-1")
    assert [e.message for e in store.events(0, 2)] == ["e0", "e1"]  # seq > 0, oldest first
    assert [e.message for e in store.events(0, 2, tail=True)] == ["e3", "e4"]  # the newest two, oldest first
    assert [e.message for e in store.events(3, 5, tail=True)] == ["e3", "e4"]
    assert [e.message for e in store.events(2, 2)] == ["e2", "e3"]
    assert store.events(0, 10)[0].kind == EventKind.STARTED

    store.set_meta("k", {"x": [1, 2]})
    assert store.get_meta("k") == {"x": [1, 2]} and store.get_meta("nope", 7) == 7
    store.close()
    # a second connection (another process: `colo status`) sees the same truth
    other = Store.open_existing(tmp_path / "colo.db")
    assert other is not None and other.get_meta("k") == {"x": [1, 2]}
    other.close()
    assert Store.open_existing(tmp_path / "missing.db") is None


def test_scan_text_finds_oom_and_mps_errors() -> None:
    oom = scan_text("loading\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert oom.oom and "Tried to allocate" in oom.oom and oom.mps_error is None
    fault = scan_text("RuntimeError: CUDA error: an illegal memory access was encountered\n")
    assert fault.mps_error and fault.fault_cause and fault.oom is None
    victim = scan_text("RuntimeError: CUDA error: cudaErrorMpsServerNotReady\n")
    assert victim.mps_error and not victim.fault_cause
    assert scan_text("all good\n") == scan_text("")


def test_log_rotation_copy_truncate_and_scanner(tmp_path: Path) -> None:
    logs = AgentLogs(tmp_path / "logs", max_bytes=100, backups=2)
    path = logs.path("a")
    scanner = LogScanner(path)
    assert scanner.read_new() == ""
    logs.mark("a", "started")
    with open(path, "a") as fh:  # an O_APPEND writer, like the agent's own stdout
        fh.write("x" * 120 + "\n")
        fh.flush()
        assert scanner.read_new().startswith("--- colo: started")
        assert logs.rotate_if_needed("a")
        fh.write("after\n")
        fh.flush()
        assert scanner.read_new() == "after\n"  # noticed the truncation
    assert path.read_text() == "after\n"
    assert (tmp_path / "logs" / "a.log.1").read_text().endswith("x" * 120 + "\n")
    path.write_text("y" * 200)
    logs.rotate_if_needed("a")
    path.write_text("z" * 200)
    logs.rotate_if_needed("a")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["a.log", "a.log.1", "a.log.2"]
    assert (tmp_path / "logs" / "a.log.2").read_text() == "y" * 200
    path.write_text("".join(f"line {i}\n" for i in range(50)))
    assert logs.tail("a", 3) == ["line 47", "line 48", "line 49"]
    assert logs.tail("nobody") == []
    assert not logs.rotate_if_needed("nobody")


def test_log_follow_yields_new_text(tmp_path: Path) -> None:
    logs = AgentLogs(tmp_path)
    logs.path("a").write_text("old\n")
    rounds = iter(range(10))

    class AppendingClock(FakeClock):
        def sleep(self, secs: float) -> None:
            with open(logs.path("a"), "a") as fh:
                fh.write("new\n")

    got = list(logs.follow("a", keep_going=lambda: next(rounds) < 3, clock=AppendingClock()))
    assert got == ["new\n"]


@pytest.fixture
def http_server() -> Iterator[int]:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def test_health_checks(http_server: int) -> None:
    check = HealthChecker()
    base = f"http://127.0.0.1:{http_server}"
    assert check(HealthCheck(type="http", url=f"{base}/ok")).ok
    bad = check(HealthCheck(type="http", url=f"{base}/nope"))
    assert not bad.ok and "503" in bad.detail
    assert check(HealthCheck(type="tcp", port=http_server)).ok
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not check(HealthCheck(type="tcp", port=closed, timeout_secs=0.5)).ok
    assert check(HealthCheck(type="command", command=[sys.executable, "-c", "pass"])).ok
    failing = check(HealthCheck(type="command", command=[sys.executable, "-c", "print('nope'); raise SystemExit(3)"]))
    assert not failing.ok and failing.detail == "exit code 3: nope"
    assert not check(HealthCheck(type="command", command=["/nonexistent/probe"])).ok
    assert check(HealthCheck(type="none")).ok


def test_process_runner_spawn_poll_signal_adopt(tmp_path: Path) -> None:
    runner = ProcessRunner()
    spec = LaunchSpec(
        (sys.executable, "-c", "import os, time; print(os.environ['COLO_T'], flush=True); time.sleep(30)"),
        (("COLO_T", "hello"),),
        str(tmp_path),
        None,
        None,
        0,
    )
    log = tmp_path / "logs" / "a.log"
    handle = runner.spawn(spec, log)
    try:
        assert runner.poll(handle) is None
        adopted = ProcessRunner().adopt(handle.pid, handle.start_time)  # as an orchestrator started again
        assert adopted is not None and adopted.adopted
        assert ProcessRunner().adopt(handle.pid, handle.start_time - 100) is None  # a reused pid is not ours
        deadline = time.monotonic() + 10
        while "hello" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "hello" in log.read_text()
        runner.signal(handle, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (status := runner.poll(handle)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status is not None and status.signal == signal.SIGTERM and not status.succeeded
        assert status.describe() == "signal SIGTERM"
        assert ProcessRunner().adopt(handle.pid, handle.start_time) is None
        runner.signal(handle, signal.SIGTERM)  # already gone: not an error
    finally:
        runner.signal(handle, signal.SIGKILL)


def test_process_runner_spawn_failure_is_supervisor_error(tmp_path: Path) -> None:
    from colo.errors import SupervisorError

    spec = LaunchSpec(("/nonexistent/agent",), (), None, None, None, 0)
    with pytest.raises(SupervisorError, match="cannot start"):
        ProcessRunner().spawn(spec, tmp_path / "x.log")


def test_stop_leftovers_after_an_orchestrator_died(tmp_path: Path) -> None:
    from colo.supervise.statedir import StateDirPaths, stop_leftovers

    paths = StateDirPaths(tmp_path / "st")
    runner = ProcessRunner()
    spec = LaunchSpec((sys.executable, "-c", "import time; time.sleep(30)"), (), None, None, None, 0)
    handle = runner.spawn(spec, paths.logs / "a.log")
    try:
        store = Store(paths.db)
        store.save_agent(AgentRecord(status("a", AgentState.RUNNING, handle.pid), handle.start_time))
        store.save_agent(AgentRecord(status("b", AgentState.FATAL, None)))
        store.close()
        done = stop_leftovers(paths.root, stop_wait_secs=5)
        assert done == [f"a: stopped pid {handle.pid}"]
        deadline = time.monotonic() + 5
        while runner.poll(handle) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.poll(handle) is not None
        store = Store(paths.db)
        states = {r.status.name: (r.status.state, r.status.pid) for r in store.agents()}
        store.close()
        assert states == {"a": (AgentState.STOPPED, None), "b": (AgentState.FATAL, None)}
        assert stop_leftovers(paths.root) == []  # nothing left the second time
    finally:
        runner.signal(handle, signal.SIGKILL)


def test_the_config_copy_keeps_defaults_apart_from_choices(tmp_path: Path) -> None:
    """What `colo apply` sends and the state dir keeps (config_yaml) reads back as the same config, and the
    built-in agent's health cadence (for fields the user left unset) survives it: 0.5 s probes, not 5 s."""
    from colo.plan import inventory_slots
    from colo.spec.load import load_config, load_config_text
    from colo.supervise import planning
    from colo.supervise.agent_setup import BUILTIN_HEALTH_FAILURES, BUILTIN_HEALTH_INTERVAL_SECS
    from colo.supervise.statedir import config_yaml

    source = Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.yaml"
    cfg = load_config(source)
    copy = load_config_text(config_yaml(cfg, source), str(tmp_path / "config.yaml"))
    assert copy == cfg
    for config in (cfg, copy):
        ap = planning.plan_slots(config, inventory_slots(config)).plan.agent("memory")
        health = planning.launch_setup(config, ap, config_copy=tmp_path / "c.yaml", mps_root=None).health
        assert (health.interval_secs, health.failures_before_restart) == (
            BUILTIN_HEALTH_INTERVAL_SECS,
            BUILTIN_HEALTH_FAILURES,
        )
