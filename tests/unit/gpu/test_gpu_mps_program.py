"""The real SubprocessMpsControl and process scan, end to end, against the fake control program.

The fake program (``colo.gpu.mps.fake`` run as an executable named ``nvidia-cuda-mps-control``) forks a real
daemon process on a Unix socket, so start / health / defaults / quit / kill run exactly as on a GPU machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo.errors import MpsError
from colo.gpu.mps.control import SubprocessMpsControl, scan_processes
from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults
from colo.gpu.mps.root import MpsRoot

UUID = "GPU-aaaaaaaa-2222-3333-4444-555555555555"


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cgp", dir="/tmp"))
    yield d
    # Never leave a fake daemon behind, whatever the test did.
    for p in scan_processes(None):
        if p.pipe_dir.startswith(str(d)):
            os.kill(p.pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def binary(workdir: Path) -> str:
    path = workdir / "bin" / "nvidia-cuda-mps-control"
    path.parent.mkdir()
    path.write_text(
        f"#!{sys.executable}\nimport runpy\nrunpy.run_module('colo.gpu.mps.fake', run_name='__main__', alter_sys=True)\n"
    )
    path.chmod(0o755)
    return str(path)


def daemon(workdir: Path, binary: str, *, hang: bool = False) -> MpsDaemon:
    env = dict(os.environ)
    env.pop("FAKE_MPS_HANG", None)
    if hang:
        env["FAKE_MPS_HANG"] = "1"
    return MpsDaemon(
        MpsRoot(workdir / "mps").for_gpu(UUID),
        UUID,
        SubprocessMpsControl(binary),
        command_timeout_secs=0.5 if hang else 5.0,
        start_timeout_secs=3.0 if hang else 10.0,
        base_env=env,
    )


def test_start_health_defaults_and_quit(workdir: Path, binary: str) -> None:
    d = daemon(workdir, binary)
    assert d.status().running is False
    assert d.start(MpsDefaults(pinned_mem_limit_bytes=2 << 30, active_thread_pct=40)) is True
    procs = d.processes()
    assert [p.kind for p in procs] == ["control"]
    assert procs[0].visible_devices == UUID
    assert d.control_pid() == procs[0].pid
    assert d.healthy() and d.default_active_thread_pct() == 40.0
    assert d.server_pids() == []
    # Adopting the running daemon starts nothing new.
    again = daemon(workdir, binary)
    assert again.start(MpsDefaults(active_thread_pct=40)) is False
    assert again.control_pid() == procs[0].pid
    result = d.stop(timeout_secs=3)
    assert result.quit_answered and result.killed_pids == ()
    assert scan_processes(d.paths.pipe_dir) == []
    assert (d.paths.log_dir / "control.log").read_text().count("Starting control daemon") == 1


def test_daemon_that_never_answers_is_refused_then_killed(workdir: Path, binary: str) -> None:
    hung = daemon(workdir, binary, hang=True)
    with pytest.raises(MpsError, match="did not answer within"):
        hung.start()
    pid = hung.control_pid()
    assert pid is not None
    # A second start finds it and refuses to adopt a daemon that does not answer.
    with pytest.raises(MpsError, match="does not answer"):
        daemon(workdir, binary, hang=True).start()
    result = hung.stop(timeout_secs=1)
    assert not result.quit_answered and result.killed_pids == (pid,)
    assert scan_processes(hung.paths.pipe_dir) == []


def test_command_to_no_daemon_fails_clearly(workdir: Path, binary: str) -> None:
    d = daemon(workdir, binary)
    d.prepare_dirs()
    with pytest.raises(MpsError, match="exited with status 1.*Cannot find MPS control daemon"):
        d.send("get_server_list")
    assert d.healthy() is False


def test_missing_binary(workdir: Path) -> None:
    with pytest.raises(MpsError, match="not an executable"):
        SubprocessMpsControl(str(workdir / "nope")).send("ps", env={})


def test_scan_tells_daemons_servers_and_interactive_clients_apart(workdir: Path) -> None:
    """Processes named like MPS's (argv[0] and the 15-byte comm) with this pipe dir in their environment."""
    pipe = workdir / "pipe"
    body = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'nvidia-cuda-mps', 0, 0, 0); time.sleep(60)"
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=str(pipe), CUDA_VISIBLE_DEVICES=UUID)
    procs = [
        subprocess.Popen([name, *flags, "-c", body], executable=sys.executable, env=env)
        for name, flags in (
            ("nvidia-cuda-mps-control", ["-d"]),
            ("nvidia-cuda-mps-server", []),
            ("nvidia-cuda-mps-control", []),  # someone's `echo cmd | nvidia-cuda-mps-control`
        )
    ]
    try:
        import time

        import psutil

        def renamed() -> bool:
            return all(psutil.Process(p.pid).name().startswith("nvidia-cuda-mps") for p in procs)

        deadline = time.monotonic() + 10
        while not renamed() and time.monotonic() < deadline:
            time.sleep(0.05)
        found = scan_processes(pipe)
        assert [(p.pid, p.kind) for p in found] == [(procs[0].pid, "control"), (procs[1].pid, "server")]
        assert found[0].visible_devices == UUID
        assert scan_processes(workdir / "other") == []
    finally:
        for p in procs:
            p.kill()
            p.wait()


REAPER = r"""
import os, signal, sys, time
from pathlib import Path
from colo.gpu import procs
from colo.gpu.mps.control import MPS_COMM, SubprocessMpsControl
from colo.gpu.mps.daemon import MpsDaemon
from colo.gpu.mps.root import MpsRoot

workdir, binary, uuid = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
subreaper = sys.argv[4] == "1"
if subreaper:
    assert procs.become_subreaper()
control = SubprocessMpsControl(binary)
d = MpsDaemon(MpsRoot(workdir / "mps").for_gpu(uuid), uuid, control, base_env=dict(os.environ))
d.start()
pid = d.control_pid()
os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + 10
while control.alive(pid) and time.monotonic() < deadline:
    time.sleep(0.02)
zombies = [p for p, _ in procs.zombie_children(MPS_COMM)]
reaped = control.reap()
print(f"daemon={pid} zombie_child={pid in zombies} reaped={pid in reaped} left={procs.zombie_children(MPS_COMM)}")
"""


@pytest.mark.parametrize("subreaper", [True, False])
def test_a_killed_daemon_is_reaped_by_its_subreaper(workdir: Path, binary: str, subreaper: bool) -> None:
    """`-d`'s launcher exits and orphans the daemon: as a child subreaper the starter inherits it, sees the
    killed daemon as its own zombie and reaps it (in a child process: the test process stays as it is)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", REAPER, str(workdir), binary, UUID, "1" if subreaper else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    if subreaper:
        assert "zombie_child=True reaped=True left=[]" in done.stdout, done.stdout
    else:  # without it, the daemon is PID 1's (or another subreaper's) to reap: never ours
        assert "zombie_child=False reaped=False left=[]" in done.stdout, done.stdout
