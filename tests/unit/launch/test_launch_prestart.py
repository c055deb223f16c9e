"""The launcher the console script starts for ``colo up`` before the CLI is imported (:mod:`colo.launch.prestart`):
which command lines start it, the runner taking it over (its early log moved to ``forkserver.log``), and one that
nobody claims ended — with real processes (a launcher that imports nothing heavy)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from colo.launch import prestart
from colo.launch.fork_runner import ForkRunner
from colo.launch.runner import ExitStatus, LaunchSpec
from testkit import COLO_ENTRY, bert_tiny_config, child_env, text_or_empty, wait_for

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "colo.yaml"
    path.write_text("version: 1\n")
    return path


@pytest.fixture(autouse=True)
def nothing_left_held() -> Iterator[None]:
    yield
    prestart.discard()


def launchers_with(marker: str) -> list[psutil.Process]:
    """Live launcher processes whose command line mentions ``marker`` (a test's own temporary directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "colo.launch.forkserver" in cmdline and marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_only_colo_up_in_the_foreground_with_a_config_file_starts_one(config: Path, tmp_path: Path) -> None:
    c = str(config)
    assert prestart.up_config(["up", c]) == config.resolve()
    assert prestart.up_config(["up", "--state-dir", str(tmp_path), "--mps", "on", c, "--no-api"]) == config.resolve()
    assert prestart.up_config(["up", "--node=a", c]) == config.resolve()
    for args in (
        [],
        ["plan", c],
        ["up"],
        ["up", c, "--detach"],
        ["up", "-d", c],
        ["up", c, "--help"],
        ["up", str(tmp_path / "missing.yaml")],
        ["up", str(tmp_path)],  # a directory
        ["up", "--state-dir", c],  # the file is the option's value, not the config
    ):
        assert prestart.up_config(args) is None, args
    assert not prestart.for_command_line(["status"], preload=False)
    assert prestart.claim(prestart.launcher_argv(sys.executable, preload=False, models_of=config), {}) is None


def test_the_runner_takes_it_over_and_its_early_log_moves(config: Path, tmp_path: Path) -> None:
    assert prestart.for_command_line(["up", str(config)], preload=False)
    held = prestart._held
    assert held is not None and held.early_log.exists()
    runner = ForkRunner(forkable=lambda spec: spec.argv[1] == "-c", preload=False, ready_wait_secs=30)
    try:
        runner.start(tmp_path / "logs", models_of=config.resolve())
        zygote = runner._zygote
        assert zygote is not None and zygote.proc.pid == held.proc.pid  # taken over, not a second one
        assert prestart._held is None
        spec = LaunchSpec((sys.executable, "-c", "print('child says hi')"), (), None, None, None, 0)
        handle = runner.spawn(spec, tmp_path / "logs" / "child.log")
        assert runner.forks == 1, runner.fallbacks
        deadline = time.monotonic() + 30
        status = None
        while status is None and time.monotonic() < deadline:
            status = runner.poll(handle)
            time.sleep(0.02)
        assert status == ExitStatus(code=0)
        assert "child says hi" in (tmp_path / "logs" / "child.log").read_text()
        log = (tmp_path / "logs" / "forkserver.log").read_text()
        assert "launcher ready" in log  # written to the early log before the take-over, moved here
        assert not held.early_log.exists()
    finally:
        runner.close()


def test_one_started_for_another_command_line_or_environment_is_ended(config: Path, tmp_path: Path) -> None:
    assert prestart.for_command_line(["up", str(config)])  # importing the config's models: ended long before
    held = prestart._held
    assert held is not None
    runner = ForkRunner(forkable=lambda spec: spec.argv[1] == "-c", preload=False, ready_wait_secs=30)
    try:
        runner.start(tmp_path / "logs", models_of=config.resolve())  # it would start another command line
        zygote = runner._zygote
        assert zygote is not None and zygote.proc.pid != held.proc.pid
        assert held.proc.poll() is not None and not held.early_log.exists()
    finally:
        runner.close()
    assert prestart.for_command_line(["up", str(config)], preload=False)
    held = prestart._held
    assert held is not None
    env = {**prestart.launcher_env(), "OMP_NUM_THREADS": "3"}
    assert prestart.claim(held.argv, env) is None
    assert held.proc.poll() is not None


def test_colo_up_that_fails_before_planning_leaves_no_launcher(tmp_path: Path) -> None:
    """Through the console script: a config that does not validate exits 2, and the launcher it started at
    once is gone with its early log (TMPDIR is this test's, so both are findable)."""
    bad = tmp_path / "colo.yaml"
    bad.write_text("version: 1\nagents:\n  a:\n    model: bert-base-uncased\n    port: not-a-port\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'colo'; from colo.cli.entry import main; main()",
            "up",
            str(bad),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not launchers_with(str(scratch))
    assert not list(scratch.glob("colo-launcher-*"))


def test_colo_up_forks_its_agent_from_the_launcher_the_console_script_started(tmp_path: Path) -> None:
    """The real ``colo up`` (console-script entry, a built-in bert-tiny agent on this CPU): the launcher started
    before the CLI is the one that forks the agent, and its early log ends up in the state dir's
    ``forkserver.log`` (the temporary file gone)."""
    config = bert_tiny_config(tmp_path / "colo.yaml")
    scratch, state = tmp_path / "scratch", tmp_path / "state"
    scratch.mkdir()
    env = child_env(TMPDIR=str(scratch), HF_HUB_OFFLINE="1")
    colo = list(COLO_ENTRY)
    up = subprocess.Popen(
        [*colo, "up", str(config), "--state-dir", str(state), "--no-api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    agent_log = state / "logs" / "solo.log"
    try:
        assert wait_for(lambda: "start phases" in text_or_empty(agent_log), timeout=180, step=0.5), text_or_empty(agent_log)[-2000:]
        first = text_or_empty(agent_log).splitlines()[0]
        assert "forked from the launcher" in first, first
        agent_pid = int(first.split(", pid ")[1].split(",")[0])
        launcher = psutil.Process(agent_pid).parent()
        assert launcher is not None and "--early-log" in launcher.cmdline()  # the console script's, taken over
        log = text_or_empty(state / "logs" / "forkserver.log")
        assert log.count("launcher start") == 1 and "launcher ready" in log, log
        assert not list(scratch.glob("colo-launcher-*"))
    finally:
        down = subprocess.run([*colo, "down", "--state-dir", str(state)], env=env, capture_output=True, timeout=60)
        up.wait(timeout=30)
    assert down.returncode == 0 and up.returncode == 0
    assert not launchers_with(str(config))
