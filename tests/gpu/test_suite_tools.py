"""CPU tests of the GPU suite's own logic (no GPU: not marked gpu, so they run in `make test`): the lanes and
the run order, the per-test records and the per-file table (``suite``), the newsroom's moved ports and its
serving checker's counts (``newsroom``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from newsroom import SIZED, Newsroom, ServingChecker
from suite import (
    FileRow,
    file_rows,
    file_table,
    lane_of,
    main,
    markdown_rows,
    merge_outcome,
    read_records,
    run_order,
    step_lines,
)

from newsroom_doc import moved_ports, two_newsrooms


def test_the_newsroom_runs_in_lane_a_whatever_its_file_and_unlisted_files_in_c() -> None:
    assert lane_of("tests/gpu/test_modelserver_gpu.py", uses_newsroom=True) == "a"
    assert lane_of("tests/gpu/test_modelserver_gpu.py", uses_newsroom=False) == "c"
    assert lane_of("/x/tests/gpu/test_memory_gpu.py", uses_newsroom=False) == "b"
    assert lane_of("tests/gpu/test_launcher_gpu.py", uses_newsroom=False) == "b"
    assert lane_of("tests/gpu/test_new_thing_gpu.py", uses_newsroom=False) == "c"


def test_run_order_puts_the_newsroom_first_by_its_order_then_the_rest_as_collected() -> None:
    uses = [False, True, True, False, True, True]
    orders = [0, 2, 0, 0, -1, 0]
    assert run_order(uses, orders) == [4, 2, 5, 1, 0, 3]


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], "passed"),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "passed")], "failed"),
        ([("setup", "failed"), ("teardown", "passed")], "error"),
        ([("setup", "passed"), ("call", "passed"), ("teardown", "failed")], "error"),
        ([("setup", "skipped"), ("teardown", "passed")], "skipped"),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "failed")], "error"),
    ],
)
def test_a_tests_outcome_is_its_worst_phase(phases: list[tuple[str, str]], expected: str) -> None:
    outcome = None
    for when, what in phases:
        outcome = merge_outcome(outcome, when, what)
    assert outcome == expected


def _records(tmp_path: Path) -> Path:
    lines = [
        {"event": "collected", "nodeid": "tests/gpu/test_a_gpu.py::t1"},
        {"event": "collected", "nodeid": "tests/gpu/test_a_gpu.py::t2"},
        {"event": "collected", "nodeid": "tests/gpu/test_b_gpu.py::t1"},
        {"event": "collected", "nodeid": "tests/gpu/test_c_gpu.py::t1"},
        {"event": "ran", "nodeid": "tests/gpu/test_a_gpu.py::t1", "outcome": "passed", "seconds": 10.5},
        {"event": "ran", "nodeid": "tests/gpu/test_a_gpu.py::t2", "outcome": "skipped", "seconds": 0.5},
        {"event": "ran", "nodeid": "tests/gpu/test_b_gpu.py::t1", "outcome": "failed", "seconds": 3.0},
    ]
    path = tmp_path / "results-a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\nnot json\n")
    return path


def test_the_table_sums_each_file_and_says_what_did_not_run(tmp_path: Path) -> None:
    collected, ran = read_records(_records(tmp_path).read_text().splitlines())
    rows = {Path(r.file).name: r for r in file_rows(collected, ran)}
    assert rows["test_a_gpu.py"].seconds == 11.0 and rows["test_a_gpu.py"].result == "passed"
    assert rows["test_b_gpu.py"].result == "FAILED"
    assert rows["test_c_gpu.py"].not_run == 1 and rows["test_c_gpu.py"].result == "INCOMPLETE"
    text = "\n".join(file_table(list(rows.values())))
    assert "test_c_gpu.py" in text and text.splitlines()[-1].startswith("total")
    assert "FAILED" in text.splitlines()[-1]
    md = markdown_rows([rows["test_a_gpu.py"], rows["test_c_gpu.py"]])
    assert md[0] == "| `test_a_gpu.py` | 11 | passed (1 passed, 1 skipped) |"
    assert md[1] == "| `test_c_gpu.py` | 0 | INCOMPLETE (none ran, 1 not run) |"


def test_a_file_whose_tests_were_all_skipped_is_skipped_not_passed() -> None:
    row = FileRow("tests/gpu/test_x_gpu.py", collected=1)
    row.outcomes["skipped"] = 1
    assert row.result == "skipped"


def test_main_prints_the_table_and_fails_on_a_failed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "table.md"
    assert main([str(_records(tmp_path)), str(tmp_path / "missing.jsonl"), "--markdown", str(md)]) == 1
    assert "test_b_gpu.py" in capsys.readouterr().out
    assert md.read_text().count("\n") == 3


def test_steps_are_one_line_per_test_in_the_order_run(tmp_path: Path) -> None:
    collected, ran = read_records(_records(tmp_path).read_text().splitlines())
    lines = step_lines(collected, ran)
    assert lines[0].startswith("step  1  t1") and "10.5 s  passed" in lines[0]
    assert "not run" in lines[-1]
    assert main([str(_records(tmp_path)), "--steps"]) == 1


def test_the_newsroom_copy_moves_every_port_and_health_url() -> None:
    doc = yaml.safe_load(SIZED.read_text())
    moved = moved_ports(doc, 200)
    for name, agent in doc["agents"].items():
        assert moved["agents"][name]["port"] == agent["port"] + 200
        assert moved["agents"][name]["health"]["url"] == f"http://127.0.0.1:{agent['port'] + 200}/health"
    assert doc["agents"]["analyst"]["port"] == 9101  # the source is left alone
    with pytest.raises(ValueError, match="not on its port"):
        moved_ports({"agents": {"x": {"port": 1, "health": {"url": "http://h:2/health"}}}}, 5)


def test_the_newsroom_object_writes_its_config_copy_and_knows_its_ports(tmp_path: Path) -> None:
    room = Newsroom(state_dir=tmp_path)
    assert room.config.parent == tmp_path and room.config.is_file()
    assert room.ports["analyst"] == 9301 and len(room.ports) == 9
    assert room.api_url == "http://127.0.0.1:8014"
    from colo.spec import load_config

    assert sorted(load_config(room.config).agents) == sorted(room.ports)


def test_a_newsroom_of_a_document_writes_that_document_moved_and_checks_the_agents_asked_for(tmp_path: Path) -> None:
    room = Newsroom(state_dir=tmp_path, doc=two_newsrooms(yaml.safe_load(SIZED.read_text())), port_offset=400,
                    label="two_gpus")
    assert len(room.ports) == 18 and room.ports["analyst"] == 9501 and room.ports["analyst_b"] == 9601
    assert yaml.safe_load(room.config.read_text())["gpus"] == "auto"
    assert room.label == "two_gpus" and Newsroom(state_dir=tmp_path / "x").label == "newsroom"
    assert set(room.checker(["analyst", "scout_b"]).ports) == {"analyst", "scout_b"}
    assert room.checker().ports == room.ports


def test_the_serving_checker_counts_running_while_failing_and_the_recovery_moment(tmp_path: Path) -> None:
    checker = ServingChecker(Newsroom(state_dir=tmp_path))
    running = {"a": "RUNNING", "b": "RUNNING"}
    checker.record(1.0, running, {"a": True, "b": True})
    assert checker.first_failure_at is None and checker.all_answering_again_at is None
    checker.record(2.0, {"a": "RUNNING", "b": "STARTING"}, {"a": False, "b": False})
    checker.record(3.0, running, {"a": True, "b": True})
    checker.record(4.0, running, {"a": True, "b": False})  # a relapse: recovered only at 5.0
    checker.record(5.0, running, {"a": True, "b": True})
    checker.record(6.0, running, {"a": True, "b": True})
    assert checker.samples == 12 and checker.rounds == 6
    assert checker.failed_requests == {"a": 1, "b": 2}
    assert checker.running_while_failing == 2 and checker.running_while_failing_by_agent == {"a": 1, "b": 1}
    assert checker.first_failure_at == 2.0 and checker.all_answering_again_at == 5.0
    assert "running_while_failing=2 (of 12 samples" in checker.summary()
    assert checker.wait_rounds(0, timeout=0.1)
    assert not checker.wait_rounds(1, timeout=0.05)


def test_the_sweep_finds_and_kills_only_the_processes_of_its_run(capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import subprocess
    import sys

    from leftovers import sweep

    run = f"/tmp/colo-sweep-test-{os.getpid()}"
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "COLO_GPU_RUN": run})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "COLO_GPU_RUN": "x"})
    try:
        found = sweep(run)
        assert [int(line.split(":", 1)[0]) for line in found] == [ours.pid]
        assert ours.wait(10) == -9
        assert other.poll() is None
        assert "leftover processes after the tests: 1" in capsys.readouterr().out
    finally:
        for p in (ours, other):
            p.kill()
            p.wait(10)
