"""The agents' first outcome after ``colo up`` (fake clock, statuses by hand), the log's last line, and the
store's new column on an old database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from colo.clock import FakeClock
from colo.spec import load_config
from colo.supervise.first_outcome import Outcome, UpOutcome, classify, wait_first_outcomes, wait_secs
from colo.supervise.logs import last_line
from colo.supervise.snapshots import AgentStatus
from colo.supervise.state import AgentState
from colo.supervise.store import AgentRecord, Store

S = AgentState


def status(name: str, state: AgentState, restarts: int = 0, line: str | None = None) -> AgentStatus:
    return AgentStatus(
        name, state, None, None, None, 0, 0, "medium", restarts,
        last_error="exit code 1" if line else None, last_error_line=line,
    )


def test_classify() -> None:
    assert classify(status("a", S.RUNNING), 0) == Outcome.RUNNING
    assert classify(status("a", S.BACKOFF), 0) == Outcome.CRASH_LOOP
    assert classify(status("a", S.FATAL), 0) == Outcome.FATAL
    assert classify(status("a", S.EXITED), 0) == Outcome.EXITED
    assert classify(status("a", S.STARTING), 0) is None
    assert classify(status("a", S.STARTING, restarts=2, line="boom"), 1) == Outcome.CRASH_LOOP  # between polls
    assert classify(status("a", S.STARTING, restarts=2), 1) is None  # restarted by apply, not a failure
    assert classify(status("a", S.STOPPING), 0) is None
    assert classify(status("a", S.STOPPED), 0) == Outcome.STOPPED


def test_wait_until_every_agent_has_a_first_outcome() -> None:
    clock = FakeClock()
    line = "ModuleNotFoundError: No module named 'torch'"
    frames = [
        [status("a", S.STARTING), status("b", S.STARTING), status("left", S.STOPPED)],
        [status("a", S.STARTING), status("b", S.BACKOFF, line=line)],
        [status("a", S.RUNNING), status("b", S.STARTING, restarts=1, line=line)],
    ]
    seen: list[tuple[int, int]] = []

    def read() -> list[AgentStatus]:
        return frames.pop(0) if len(frames) > 1 else frames[0]

    out = wait_first_outcomes(
        read, ["a", "b"], timeout_secs=60, clock=clock, on_progress=lambda d, t, s: seen.append((d, t))
    )
    assert [(a.name, a.outcome) for a in out.agents] == [("a", Outcome.RUNNING), ("b", Outcome.CRASH_LOOP)]
    assert out.agents[1].last_error_line == line and out.agents[1].reason == "exit code 1"
    assert not out.all_running and len(out.running) == 1 and not out.timed_out
    assert seen == [(0, 2), (1, 2), (2, 2)]
    assert UpOutcome.from_dict(out.to_dict()).agents == out.agents


def test_the_wait_is_bounded() -> None:
    clock = FakeClock()
    out = wait_first_outcomes(lambda: [status("a", S.STARTING)], ["a", "gone"], timeout_secs=3, clock=clock)
    assert out.timed_out and [a.outcome for a in out.agents] == [Outcome.STARTING, Outcome.STARTING]
    assert 3 <= out.waited_secs < 4


def test_wait_secs_follows_the_start_timeouts(tmp_path: Path) -> None:
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(
        "version: 1\ngpus: [{name: X, memory: 24GiB}]\nmodels: {m: {memory: 1GiB}}\nagents:\n"
        "  a: {models: [m], command: [x], health: {type: none, start_secs: 2}}\n"
        "  b: {models: [m], command: [x], health: {type: tcp, port: 9, startup_timeout_secs: 30},"
        " restart: {stop_wait_secs: 4}}\n"
    )
    config = load_config(cfg)
    assert wait_secs(config, ["a"]) == 2 + 10 + 5
    assert wait_secs(config, ["a", "b"]) == 30 + 4 + 5


def test_last_line_skips_colo_marks_and_blank_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    assert last_line(log) is None
    log.write_text("--- colo: started\n")
    assert last_line(log) is None
    log.write_text("x\n" * 10000 + "  boom: " + "y" * 1000 + "  \n\n--- colo: pid 1 exited\n")
    found = last_line(log)
    assert found is not None and found.startswith("boom: ") and len(found) == 300


def test_store_adds_the_new_column_to_an_old_database(tmp_path: Path) -> None:
    db = tmp_path / "colo.db"
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE agents (name TEXT PRIMARY KEY, state TEXT NOT NULL, pid INTEGER, start_time REAL,"
                " restarts INTEGER NOT NULL DEFAULT 0, gpu TEXT, gpu_uuid TEXT, limit_bytes INTEGER NOT NULL DEFAULT 0,"
                " requirement_bytes INTEGER NOT NULL DEFAULT 0, priority TEXT NOT NULL DEFAULT 'medium',"
                " memory_used_bytes INTEGER, memory_peak_bytes INTEGER, last_error TEXT, since REAL,"
                " models TEXT NOT NULL DEFAULT '[]', fingerprint TEXT)")
    old.execute("INSERT INTO agents (name, state) VALUES ('old', 'STOPPED')")
    old.commit()
    old.close()
    store = Store(db)
    try:
        assert [r.status.last_error_line for r in store.agents()] == [None]
        store.save_agent(AgentRecord(status("new", S.BACKOFF, line="boom")))
        assert {r.status.name: r.status.last_error_line for r in store.agents()} == {"old": None, "new": "boom"}
    finally:
        store.close()
