"""The pre-imported launcher (zygote) and ForkRunner, with real processes (a zygote that imports nothing heavy)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from colo.launch.fork_runner import ForkRunner, is_builtin_agent, make_runner
from colo.launch.forkserver import fork_blocker
from colo.launch.runner import ExitStatus, LaunchSpec, ProcessHandle, ProcessRunner
from colo.modelserver.startup import PHASES
from colo.spec.config import Policy


def py(code: str, env: dict[str, str] | None = None, cwd: str | None = None) -> LaunchSpec:
    return LaunchSpec((sys.executable, "-c", code), tuple(sorted((env or {}).items())), cwd, None, None, 0)


def only_c(spec: LaunchSpec) -> bool:
    return spec.argv[0] == sys.executable and spec.argv[1] == "-c"


@pytest.fixture
def runner() -> Iterator[ForkRunner]:
    r = ForkRunner(forkable=only_c, preload=False, ready_wait_secs=30)
    yield r
    r.close()


def wait_for(fn: Callable[[], object], secs: float = 30.0) -> object:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError("timed out")


def exit_of(runner: ForkRunner, handle: ProcessHandle) -> ExitStatus:
    got = wait_for(lambda: runner.poll(handle))
    assert isinstance(got, ExitStatus)
    return got


def zombies_of(*parents: int) -> list[int]:
    """Pids in state Z whose parent is one of ``parents``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) in parents:
            found.append(int(entry))
    return found


def zygote_pid(runner: ForkRunner) -> int:
    z = runner._zygote
    assert z is not None
    return z.proc.pid


def test_forks_a_child_with_its_env_cwd_log_and_exit_code(runner: ForkRunner, tmp_path: Path) -> None:
    code = "import os, sys; print(os.environ['COLO_T'], os.getcwd(), sys.argv, os.getsid(0) == os.getpid()); sys.exit(7)"
    handle = runner.spawn(py(code, {"COLO_T": "hello"}, str(tmp_path)), tmp_path / "logs" / "a.log")
    assert runner.forks == 1 and runner.fallbacks == []
    status = exit_of(runner, handle)
    assert status == ExitStatus(code=7) and status.describe() == "exit code 7"
    assert (tmp_path / "logs" / "a.log").read_text().split() == ["hello", str(tmp_path), "['-c']", "True"]
    assert runner.poll(handle) is None or runner.poll(handle) == ExitStatus()  # reported once
    assert zombies_of(os.getpid(), zygote_pid(runner)) == []


def test_exceptions_and_sys_exit_become_exit_codes(runner: ForkRunner, tmp_path: Path) -> None:
    raised = runner.spawn(py("raise RuntimeError('boom')"), tmp_path / "r.log")
    text = runner.spawn(py("import sys; sys.exit('bad thing')"), tmp_path / "t.log")
    ok = runner.spawn(py("pass"), tmp_path / "o.log")
    assert exit_of(runner, raised) == ExitStatus(code=1)
    assert "RuntimeError: boom" in (tmp_path / "r.log").read_text()
    assert exit_of(runner, text) == ExitStatus(code=1)
    assert "bad thing" in (tmp_path / "t.log").read_text()
    assert exit_of(runner, ok).succeeded


def test_terminate_and_kill_reach_the_child_and_are_reported(runner: ForkRunner, tmp_path: Path) -> None:
    sleeper = runner.spawn(py("import time; time.sleep(60)"), tmp_path / "s.log")
    stubborn_code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    stubborn = runner.spawn(py(stubborn_code), tmp_path / "k.log")
    assert runner.poll(sleeper) is None and runner.poll(stubborn) is None
    wait_for(lambda: "ready" in (tmp_path / "k.log").read_text())
    runner.signal(sleeper, signal.SIGTERM)
    runner.signal(stubborn, signal.SIGTERM)
    assert exit_of(runner, sleeper) == ExitStatus(signal=signal.SIGTERM)
    time.sleep(0.3)
    assert runner.poll(stubborn) is None  # ignored SIGTERM
    runner.signal(stubborn, signal.SIGKILL)
    assert exit_of(runner, stubborn).describe() == "signal SIGKILL"
    runner.signal(stubborn, signal.SIGKILL)  # already gone: not an error
    assert zombies_of(os.getpid(), zygote_pid(runner)) == []


def test_unforkable_specs_are_spawned_plainly(runner: ForkRunner, tmp_path: Path) -> None:
    plain = runner.spawn(LaunchSpec(("/bin/sh", "-c", "exit 3"), (), None, None, None, 0), tmp_path / "sh.log")
    assert runner.forks == 0 and runner.fallbacks == []  # not forkable at all: no zygote started
    assert exit_of(runner, plain) == ExitStatus(code=3)
    runner.spawn(py("pass"), tmp_path / "a.log")  # starts the zygote
    assert runner.forks == 1
    other_path = runner.spawn(py("import sys; sys.exit(5)", {"PYTHONPATH": "/elsewhere"}), tmp_path / "b.log")
    assert runner.forks == 1 and "PYTHONPATH" in runner.fallbacks[-1]
    assert exit_of(runner, other_path) == ExitStatus(code=5)


def test_zygote_death_falls_back_to_spawning_and_a_new_zygote_takes_over(runner: ForkRunner, tmp_path: Path) -> None:
    orphan = runner.spawn(py("import time; time.sleep(60)"), tmp_path / "o.log")
    first = zygote_pid(runner)
    os.kill(first, signal.SIGKILL)
    z = runner._zygote
    assert z is not None
    wait_for(z.gone.is_set)
    assert zombies_of(os.getpid()) == []  # the dead zygote was reaped
    assert runner.poll(orphan) is None  # still running, now tracked by pid and start time
    plain = runner.spawn(py("import sys; sys.exit(9)"), tmp_path / "p.log")
    assert runner.forks == 1 and len(runner.fallbacks) == 1  # spawned plainly while a new zygote starts
    assert exit_of(runner, plain) == ExitStatus(code=9)
    assert runner.wait_ready(30) and zygote_pid(runner) != first
    forked = runner.spawn(py("import sys; sys.exit(4)"), tmp_path / "f.log")
    assert runner.forks == 2 and exit_of(runner, forked) == ExitStatus(code=4)
    runner.signal(orphan, signal.SIGKILL)  # through its process group, as for an adopted agent
    assert exit_of(runner, orphan) == ExitStatus()  # gone; its exit status went to its new parent


def test_closing_the_runner_leaves_agents_running_for_the_next_orchestrator(tmp_path: Path) -> None:
    runner = ForkRunner(forkable=only_c, preload=False)
    handle = runner.spawn(py("import time; time.sleep(60)"), tmp_path / "a.log")
    zygote = runner._zygote
    assert zygote is not None
    runner.close()
    assert zygote.proc.returncode == 0  # EOF on its control pipe: the zygote left
    again = ProcessRunner()
    adopted = again.adopt(handle.pid, handle.start_time)
    assert adopted is not None
    again.signal(adopted, signal.SIGKILL)
    wait_for(lambda: again.poll(adopted) is not None)


def test_fork_blocker_refuses_a_threaded_process() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert "threads" in (fork_blocker() or "")
    finally:
        stop.set()
        t.join()


def test_runner_choice_and_builtin_agent_detection() -> None:
    assert Policy().launcher == "fork"
    assert isinstance(make_runner("fork"), ForkRunner) and isinstance(make_runner("spawn"), ProcessRunner)
    from colo.modelserver.command import builtin_agent_command

    builtin = LaunchSpec(tuple(builtin_agent_command("a", "/x.yaml", 9100)), (), None, None, None, 0)
    assert is_builtin_agent(builtin)
    assert not is_builtin_agent(LaunchSpec(("python", "-m", "colo.modelserver.serve"), (), None, None, None, 0))
    assert not is_builtin_agent(py("pass"))


def test_the_orchestrator_picks_its_runner_from_policy_launcher(tmp_path: Path) -> None:
    from colo.spec import load_config
    from colo.supervise.orchestrator import Orchestrator

    config = load_config(Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.sized.yaml")
    assert isinstance(Orchestrator(config, state_dir=tmp_path / "a").runner, ForkRunner)
    spawn = config.model_copy(update={"policy": config.policy.model_copy(update={"launcher": "spawn"})})
    assert isinstance(Orchestrator(spawn, state_dir=tmp_path / "b").runner, ProcessRunner)


def test_a_real_builtin_agent_forked_on_cpu_serves_and_its_exit_codes_come_back(tmp_path: Path) -> None:
    """The pre-imported zygote (torch, transformers) forks the built-in agent: its imports are already done,
    it answers /health and /infer, SIGTERM ends it with 0 and a bad agent name with 2, both reported."""
    import socket

    import httpx

    from colo.modelserver.command import builtin_agent_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    from colo.memory.build import build

    tiny = "google/bert_uncased_L-2_H-128_A-2"
    build(tiny).module.save_pretrained(tmp_path / "tiny")  # weights on disk: the launcher prebuilds only those
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(
        "version: 1\ngpus: [{name: T, memory: 8GiB}]\n"
        f"models:\n  {tiny}: {{memory: 1GiB, batch_size: 4, max_seq_len: 32, path: {tmp_path / 'tiny'}}}\n"
        f"agents:\n  solo:\n    models: [{tiny}]\n    port: {port}\n",
        encoding="utf-8",
    )

    def spec(agent: str) -> LaunchSpec:
        argv = builtin_agent_command(agent, cfg, port, device="cpu")
        return LaunchSpec(tuple(argv), (("COLO_AGENT", agent),), str(tmp_path), None, None, 0)

    runner = ForkRunner()
    try:
        bad = runner.spawn(spec("ghost"), tmp_path / "ghost.log")
        assert exit_of(runner, bad) == ExitStatus(code=2)
        handle = runner.spawn(spec("solo"), tmp_path / "solo.log")
        assert runner.forks == 2 and runner.fallbacks == []

        def healthy() -> bool:
            assert runner.poll(handle) is None, (tmp_path / "solo.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        def healthy_pid(pid: int) -> Callable[[], bool]:
            def check() -> bool:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                except httpx.TransportError:
                    return False
                return r.status_code == 200 and r.json()["pid"] == pid

            return check

        wait_for(healthy, 120)
        body = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
        assert body["pid"] == handle.pid
        assert body["start"]["launched_by"] == "fork" and body["start"]["complete"]
        assert list(body["start"]["phases_secs"]) == ["fork", *PHASES]
        out = httpx.post(f"http://127.0.0.1:{port}/infer", json={"texts": ["one", "two"]}, timeout=30)
        assert out.status_code == 200 and out.json()["embedding_shape"] == [2, 128]
        runner.signal(handle, signal.SIGTERM)
        assert exit_of(runner, handle) == ExitStatus(code=0)
        text = (tmp_path / "solo.log").read_text()
        assert "imports: torch 0.00s transformers 0.00s" in text and "stopped" in text
        assert "start phases: fork " in text and "prebuilt by the launcher" not in text

        # While idle the launcher built the model once; the restarted agent inherits it and only moves it.
        wait_for(lambda: f"prebuilt {tiny}" in (tmp_path / "forkserver.log").read_text(), 60)
        again = runner.spawn(spec("solo"), tmp_path / "again.log")
        wait_for(healthy_pid(again.pid), 120)
        assert "prebuilt by the launcher" in (tmp_path / "again.log").read_text()
        runner.signal(again, signal.SIGTERM)
        assert exit_of(runner, again) == ExitStatus(code=0)
        launcher_log = (tmp_path / "forkserver.log").read_text()
        assert "launcher import torch: libcuda" in launcher_log  # the driver's state after each import step
        assert zombies_of(os.getpid(), zygote_pid(runner)) == []
    finally:
        runner.close()


def test_a_child_that_exits_before_fork_returns_keeps_its_exit() -> None:
    """The zygote's reply (pid) and that child's exit can both be read before fork() takes the lock again: the
    exit must be kept (it was dropped as "stale" once, and the agent looked alive forever)."""
    import json as _json
    import queue
    import threading as _threading
    from typing import Any, cast

    from colo.launch.fork_runner import _Zygote

    lines: queue.Queue[bytes | None] = queue.Queue()

    class Stdin:
        def write(self, data: bytes) -> int:
            rid = _json.loads(data)["id"]
            lines.put((_json.dumps({"exit": 4242, "code": 9}) + "\n").encode())  # an old child's exit: stale
            lines.put((_json.dumps({"id": rid, "pid": 4242}) + "\n").encode())
            lines.put((_json.dumps({"exit": 4242, "code": 3}) + "\n").encode())  # the new child, at once
            return len(data)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    class Stdout:
        def __iter__(self) -> Any:
            return iter(lines.get, None)

        def close(self) -> None:
            pass

    class Proc:
        stdin = Stdin()
        stdout = Stdout()
        pid = 1

        def wait(self, timeout: float | None = None) -> int:
            return 0

    z = _Zygote(cast(Any, Proc()), {}, first=True)
    reader = _threading.Thread(target=z.read_forever, daemon=True)
    reader.start()
    pid = z.fork(["x"], {}, None, Path("/tmp/unused.log"))
    deadline = time.monotonic() + 5
    while 4242 not in z.exits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pid == 4242 and z.exits.get(4242) == ExitStatus(code=3)
    lines.put(None)
    reader.join(5)


def test_start_launcher_starts_the_zygote_before_any_spawn_only_for_builtin_agents(tmp_path: Path) -> None:
    from colo.spec import load_config
    from colo.supervise.planning import plan_run
    from colo.supervise.startup import start_launcher

    config = load_config(Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.sized.yaml")
    mine, _ = plan_run(config, None, state_dir=tmp_path / "state").local()
    assert len(mine) == 9
    commands = config.model_copy(
        update={"agents": {n: a.model_copy(update={"command": ["true"]}) for n, a in config.agents.items()}}
    )
    path = tmp_path / "colo.yaml"
    assert not start_launcher(ProcessRunner(), config, mine, tmp_path, path)  # no launcher to start
    runner = ForkRunner(forkable=only_c, preload=False, ready_wait_secs=30)
    try:
        assert not start_launcher(runner, commands, mine, tmp_path, path)  # every agent has a command
        assert not start_launcher(runner, config, [], tmp_path, path)  # no agent here (pods, units)
        assert runner._zygote is None
        assert start_launcher(runner, config, mine, tmp_path / "logs", path)
        assert runner.wait_ready(30)  # imported (here: nothing) before the first spawn asked for it
        first = zygote_pid(runner)
        forked = runner.spawn(py("import sys; sys.exit(3)"), tmp_path / "logs" / "a.log")
        assert exit_of(runner, forked) == ExitStatus(code=3)
        assert runner.forks == 1 and zygote_pid(runner) == first  # the spawn used the zygote started early
        assert (tmp_path / "logs" / "forkserver.log").exists()
    finally:
        runner.close()


def test_early_runner_starts_colo_ups_launcher_before_the_plan_only_where_it_will_fork(tmp_path: Path) -> None:
    from colo.spec import load_config
    from colo.supervise.startup import early_runner

    config = load_config(Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.sized.yaml")
    spawn = config.model_copy(update={"policy": config.policy.model_copy(update={"launcher": "spawn"})})
    commands = config.model_copy(
        update={"agents": {n: a.model_copy(update={"command": ["true"]}) for n, a in config.agents.items()}}
    )
    two_nodes = config.model_copy(
        update={"gpus": [config.gpus[0], config.gpus[0].model_copy(update={"node": "other"})]}
    )
    path = Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.sized.yaml"
    for no in (spawn, commands, two_nodes):
        assert early_runner(no, path, tmp_path / "logs") is None
    assert not (tmp_path / "logs" / "forkserver.log").exists()
    runner = early_runner(config, path, tmp_path / "logs")
    assert isinstance(runner, ForkRunner)
    zygote = runner._zygote
    assert zygote is not None and zygote.proc.poll() is None  # importing torch in the background
    assert list(zygote.proc.args)[-2:] == ["--models-of", str(path)]  # and then the config's model classes
    started = time.monotonic()
    runner.close()  # before its imports are done: ended at once, not after them
    assert zygote.proc.returncode is not None and time.monotonic() - started < 4.5
