"""The node launcher (``colo launcher``): a launcher imported before ``colo up``, whose sessions fork the agents.

Real processes throughout: a node launcher that imports nothing heavy for the runner tests, and the real one
(torch, transformers) behind the installed ``colo`` for the end-to-end test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from colo.cli import launcher_cmd
from colo.launch import node_launcher
from colo.launch.fork_runner import ForkRunner
from colo.launch.node_launcher import NodeInfo, NodeLauncherError, connect, unusable
from colo.launch.prestart import launcher_env
from colo.launch.runner import ExitStatus, LaunchSpec
from testkit import COLO_ENTRY, bert_tiny_config, child_env, text_or_empty, wait_for

COLO = list(COLO_ENTRY)


def py(code: str) -> LaunchSpec:
    return LaunchSpec((sys.executable, "-c", code), (), None, None, None, 0)


def only_c(spec: LaunchSpec) -> bool:
    return spec.argv[0] == sys.executable and spec.argv[1] == "-c"


def start_node(sock: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m colo.launch.node_launcher --no-preload`` at ``sock``, answering once this returns."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            node_launcher.command_line(sock, preload=False),
            env={**launcher_env(), **env},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    assert wait_for(lambda: sock.exists() or proc.poll() is not None, timeout=30, step=0.05)
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = tmp_path / "run" / "launcher.sock"
    proc = start_node(sock, tmp_path / "node.log")
    yield proc, sock
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def exit_of(runner: ForkRunner, handle: object) -> ExitStatus:
    got = wait_for(lambda: runner.poll(handle), timeout=30, step=0.02)  # type: ignore[arg-type]
    assert isinstance(got, ExitStatus)
    return got


def test_a_runner_forks_from_a_session_that_ends_with_it_and_the_launcher_stays(
    node: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, sock = node
    runner = ForkRunner(forkable=only_c, preload=False, node_socket=sock)
    logs = tmp_path / "logs"
    runner.start(logs)
    assert runner.node is not None and runner.node.pid == proc.pid
    code = exit_of(runner, runner.spawn(py("import sys; sys.exit(7)"), logs / "a.log"))
    assert code.code == 7
    long = runner.spawn(py("import os, time; print(os.getppid(), flush=True); time.sleep(60)"), logs / "b.log")
    assert "node launcher, pid" in long.launch
    assert wait_for(lambda: (logs / "b.log").read_text().strip(), timeout=10, step=0.02)
    session = int((logs / "b.log").read_text().split()[0])
    assert session != proc.pid and psutil.Process(session).ppid() == proc.pid  # a session forked it
    assert "a session (pid" in (logs / "forkserver.log").read_text()  # its log moved to the runner's dir
    runner.close()
    assert wait_for(lambda: not psutil.pid_exists(session) or psutil.Process(session).status() == "zombie", 10, 0.05)
    assert psutil.pid_exists(long.pid)  # the agent goes on, as with a launcher of colo up's own
    os.kill(long.pid, signal.SIGKILL)
    assert proc.poll() is None  # the node launcher too
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not sock.exists()


def test_a_node_launcher_that_does_not_suit_the_runner_is_left_for_its_own(tmp_path: Path) -> None:
    """Started with another value of a variable read at process start: the runner says why and forks from a
    launcher of its own instead."""
    sock = tmp_path / "run" / "launcher.sock"
    proc = start_node(sock, tmp_path / "node.log", OMP_NUM_THREADS="3")
    try:
        runner = ForkRunner(forkable=only_c, preload=False, node_socket=sock, ready_wait_secs=30)
        try:
            runner.start(tmp_path / "logs")
            assert runner.node is None
            handle = runner.spawn(py("import sys; sys.exit(5)"), tmp_path / "logs" / "a.log")
            assert handle.launch == "forked from the launcher"
            assert exit_of(runner, handle).code == 5
        finally:
            runner.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_unusable_says_what_differs() -> None:
    mine = NodeInfo(
        pid=1,
        python=sys.executable,
        signature=node_launcher.code_signature(),
        preload=True,
        env=node_launcher.exec_time_env(launcher_env()),
        started_unix=0.0,
        socket="/x",
        import_secs={},
    )
    env = launcher_env()
    assert unusable(mine, python=sys.executable, preload=True, env=env) is None
    assert "runs /other/python" in str(
        unusable(dataclasses.replace(mine, python="/other/python"), python=sys.executable, preload=True, env=env)
    )
    assert "without the heavy imports" in str(
        unusable(dataclasses.replace(mine, preload=False), python=sys.executable, preload=True, env=env)
    )
    assert "restart it" in str(
        unusable(dataclasses.replace(mine, signature="0" * 16), python=sys.executable, preload=True, env=env)
    )
    assert "MALLOC_ARENA_MAX" in str(
        unusable(mine, python=sys.executable, preload=True, env={**env, "MALLOC_ARENA_MAX": "2"})
    )


def test_connect_tells_nothing_there_from_something_wrong_there(tmp_path: Path) -> None:
    assert connect(tmp_path / "none.sock") is None
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(NodeLauncherError, match="not a socket"):
        connect(plain)
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # bound, never listening: what a killed launcher leaves
    assert connect(stale) is None
    other = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(other))
    server.listen(1)
    try:
        with pytest.raises(NodeLauncherError, match="no ready message"):
            connect(other, timeout_secs=0.3)
    finally:
        server.close()


def test_the_socket_directory_must_be_private(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(NodeLauncherError, match="open to other users"):
        node_launcher.prepare_dir(open_dir / "launcher.sock")
    r = subprocess.run(
        [*COLO, "launcher", "start", "--socket", str(open_dir / "launcher.sock")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "open to other users" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_second_launcher_on_the_same_socket_refuses_and_the_first_stays(
    node: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, sock = node
    second = subprocess.run(
        node_launcher.command_line(sock, preload=False),
        env={**launcher_env(), **child_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and f"already listens at {sock} (pid {proc.pid})" in second.stderr
    session = connect(sock)
    assert session is not None and session.node.pid == proc.pid
    session.close()


def test_colo_launcher_start_then_colo_up_forks_from_it_and_down_leaves_only_it(tmp_path: Path) -> None:
    """As a user meets it, with the real (heavy) launcher: ``colo launcher start``, ``colo up`` of a bert-tiny
    agent forks it from a session of that launcher (no launcher of its own, none started by the console
    script), ``colo down`` leaves the node launcher alone and nothing else; ``status --json``; ``stop``."""
    sock = tmp_path / "run" / "launcher.sock"
    config = bert_tiny_config(tmp_path / "colo.yaml")
    env = child_env(HF_HUB_OFFLINE="1", **{node_launcher.SOCKET_ENV: str(sock)})
    none = subprocess.run([*COLO, "launcher", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 1 and "no node launcher" in none.stderr
    start = subprocess.run(
        [*COLO, "launcher", "start", "--models-of", str(config), "--log", str(tmp_path / "launcher.log")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert start.returncode == 0 and "node launcher ready" in start.stdout, start.stderr
    status = subprocess.run([*COLO, "launcher", "status", "--json"], env=env, capture_output=True, text=True)
    info = json.loads(status.stdout)
    node_pid = info["node"]["pid"]
    assert info["usable"] is True and info["node"]["import_secs"]["torch"] > 0
    state = tmp_path / "state"
    up_out = tmp_path / "up.out"
    with open(up_out, "wb") as out:
        up = subprocess.Popen(
            [*COLO, "up", str(config), "--state-dir", str(state), "--no-api"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent_log = state / "logs" / "solo.log"
    try:
        assert wait_for(lambda: "start phases" in text_or_empty(agent_log), timeout=120, step=0.2), text_or_empty(agent_log)[-2000:]
        first = text_or_empty(agent_log).splitlines()[0]
        assert f"a session of the node launcher, pid {node_pid}" in first, first
        assert wait_for(lambda: "forked from the node launcher" in text_or_empty(up_out), timeout=10, step=0.1)
        up_children = [p.cmdline() for p in psutil.Process(up.pid).children(recursive=True)]
        assert not any("colo.launch.forkserver" in " ".join(c) for c in up_children)  # no launcher of its own
    finally:
        down = subprocess.run([*COLO, "down", "--state-dir", str(state)], env=env, capture_output=True, timeout=60)
        up.wait(timeout=30)
    assert down.returncode == 0 and up.returncode == 0
    node = psutil.Process(node_pid)
    assert wait_for(lambda: not [c for c in node.children() if c.status() != "zombie"], timeout=10, step=0.05)
    stop = subprocess.run([*COLO, "launcher", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not psutil.pid_exists(node_pid) or node.status() == "zombie"
    assert not sock.exists()
    again = subprocess.run([*COLO, "launcher", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to stop" in again.stdout


def test_status_and_stop_with_no_launcher_there(tmp_path: Path) -> None:
    """In-process, through typer: ``status`` exits 1 and says none answers; ``stop`` has nothing to do (0)."""
    from typer.testing import CliRunner

    sock = str(tmp_path / "run" / "launcher.sock")
    app = launcher_cmd.launcher_app
    status = CliRunner().invoke(app, ["status", "--socket", sock, "--json"])
    assert status.exit_code == 1 and json.loads(status.stdout) == {
        "socket": sock,
        "running": False,
        "error": "none answers there",
    }
    stop = CliRunner().invoke(app, ["stop", "--socket", sock])
    assert stop.exit_code == 0 and "nothing to stop" in stop.stdout
