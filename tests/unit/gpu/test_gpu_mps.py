"""MpsDaemon / MpsFleet / client_env against the fake control program (no GPU, no sleeps)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.errors import MpsError
from colo.gpu.mps.control import SIGKILL, SIGTERM, MpsControl
from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults
from colo.gpu.mps.env import client_env
from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.replies import ServerStatus, parse_pids, parse_ps, parse_server_status
from colo.gpu.mps.root import MAX_PIPE_DIR_CHARS, MpsPaths, MpsRoot
from colo.plan.types import AgentPlan, GpuSlot, ModelMemory
from colo.units import GIB, MIB

UUID = "GPU-11111111-2222-3333-4444-555555555555"
UUID2 = "GPU-66666666-2222-3333-4444-555555555555"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short directory: MPS pipe dirs must stay under the Unix socket path limit."""
    d = tempfile.mkdtemp(prefix="cg", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def make_daemon(tmp_path: Path, control: FakeMpsControl, uuid: str = UUID, clock: FakeClock | None = None) -> MpsDaemon:
    return MpsDaemon(MpsRoot(tmp_path / "mps").for_gpu(uuid), uuid, control, clock=clock or FakeClock(0.0), base_env={})


def agent(name: str = "critic", limit: int = 2 * GIB, pct: int = 50, prio: int = 1) -> AgentPlan:
    return AgentPlan(
        name=name,
        models=(ModelMemory("m", limit // 2),),
        priority="low",
        requirement_bytes=limit // 2,
        margin_bytes=limit // 2,
        limit_bytes=limit,
        client_priority=prio,
        active_thread_pct=pct,
        gpu=GpuSlot("local", 0, "H100", 80 * GIB, UUID),
    )


def test_root_layout_one_pipe_and_log_dir_per_gpu(tmp_path: Path) -> None:
    root = MpsRoot.under_state_dir(tmp_path)
    p = root.for_gpu(UUID)
    assert p == MpsPaths(tmp_path / "mps" / UUID / "pipe", tmp_path / "mps" / UUID / "log")
    with pytest.raises(MpsError):
        root.for_gpu("../etc")


def test_start_applies_defaults_before_any_client(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    assert isinstance(fake, MpsControl)
    d = make_daemon(tmp_path, fake)
    started = d.start(MpsDefaults(pinned_mem_limit_bytes=3 * GIB, active_thread_pct=60, client_priority=1))
    assert started is True and d.started_by_colo
    daemon = fake.daemon_at(d.paths.pipe_dir)
    assert daemon.visible_devices == UUID
    assert daemon.pinned_mem_limit == {"0": "3072M"}
    assert daemon.active_thread_pct == 60.0 and daemon.client_priority == 1
    assert d.healthy() and d.control_pid() is not None
    # The first server takes the defaults.
    spid = fake.connect_client(d.paths.pipe_dir, 777)
    assert fake.daemon_at(d.paths.pipe_dir).servers[spid].pinned_mem_limit == "3072M"
    assert d.server_pids() == [spid]
    assert d.server_status(spid) is ServerStatus.ACTIVE
    assert d.client_pids(spid) == [777]
    rows = d.ps()
    assert [(r.pid, r.server_pid) for r in rows] == [(777, spid)]


def test_start_adopts_a_running_daemon_and_reapplies_defaults(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    d = make_daemon(tmp_path, fake)
    assert d.start(MpsDefaults(active_thread_pct=80)) is True
    first_pid = d.control_pid()
    fake.daemon_at(d.paths.pipe_dir).active_thread_pct = 100.0  # e.g. restarted by someone with no defaults
    again = make_daemon(tmp_path, fake)
    assert again.start(MpsDefaults(active_thread_pct=80)) is False
    assert again.control_pid() == first_pid
    assert fake.daemon_at(d.paths.pipe_dir).active_thread_pct == 80.0
    assert again.started_by_colo is False


def test_adopt_refuses_a_daemon_pinned_to_another_gpu(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    paths = MpsRoot(tmp_path / "mps").for_gpu(UUID)
    fake.add_daemon(paths.pipe_dir, paths.log_dir, UUID2)
    with pytest.raises(MpsError, match="pinned to"):
        make_daemon(tmp_path, fake).start()


def test_adopt_refuses_a_daemon_that_does_not_answer(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    paths = MpsRoot(tmp_path / "mps").for_gpu(UUID)
    fake.add_daemon(paths.pipe_dir, paths.log_dir, UUID)
    fake.hang(paths.pipe_dir)
    with pytest.raises(MpsError, match="does not answer"):
        make_daemon(tmp_path, fake).start()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MpsError, match="not found") as info:
        make_daemon(tmp_path, FakeMpsControl(binary_present=False)).start()
    assert info.value.exit_code == 2


def test_new_daemon_that_never_answers_times_out_on_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    d = make_daemon(tmp_path, FakeMpsControl(start_unresponsive=True), clock=clock)
    with pytest.raises(MpsError, match="did not answer within 20 s"):
        d.start()
    assert clock.monotonic() >= 20.0


def test_pipe_dir_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    d = MpsDaemon(MpsRoot(blocker).for_gpu(UUID), UUID, FakeMpsControl(), base_env={})
    with pytest.raises(MpsError, match="cannot create MPS directory"):
        d.start()


def test_pipe_dir_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root may write anywhere, so the permission check is driven through os.access.
    monkeypatch.setattr("colo.gpu.mps.daemon.os.access", lambda path, mode: False)
    d = MpsDaemon(MpsRoot(tmp_path).for_gpu(UUID), UUID, FakeMpsControl(), base_env={})
    with pytest.raises(MpsError, match="not writable"):
        d.start()


def test_pipe_dir_too_long_for_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * MAX_PIPE_DIR_CHARS)
    d = MpsDaemon(MpsRoot(deep).for_gpu(UUID), UUID, FakeMpsControl(), base_env={})
    with pytest.raises(MpsError, match="Unix socket path limit"):
        d.start()


def test_env_pins_gpu_and_drops_client_limits() -> None:
    d = MpsDaemon(
        MpsPaths(Path("/p"), Path("/l")),
        UUID,
        FakeMpsControl(),
        base_env={"PATH": "/bin", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1G", "CUDA_VISIBLE_DEVICES": "3"},
    )
    env = d.env()
    assert env == {
        "PATH": "/bin",
        "CUDA_MPS_PIPE_DIRECTORY": "/p",
        "CUDA_MPS_LOG_DIRECTORY": "/l",
        "CUDA_VISIBLE_DEVICES": UUID,
    }


def test_stop_quits_cleanly(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    d = make_daemon(tmp_path, fake)
    d.start()
    fake.connect_client(d.paths.pipe_dir, 5)
    fake.disconnect_client(d.paths.pipe_dir, 5)
    result = d.stop(timeout_secs=5)
    assert result.was_running and result.quit_answered and result.killed_pids == ()
    assert (str(d.paths.pipe_dir), "quit -t 5") in fake.sent
    assert d.processes() == [] and not d.control_pid() is not None
    assert fake.signals == []


def test_stop_kills_a_daemon_that_does_not_answer_quit(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    clock = FakeClock(0.0)
    d = make_daemon(tmp_path, fake, clock=clock)
    d.start()
    spid = fake.connect_client(d.paths.pipe_dir, 5)
    cpid = d.control_pid()
    fake.hang(d.paths.pipe_dir)
    result = d.stop(timeout_secs=5)
    assert result.was_running and not result.quit_answered
    assert set(result.killed_pids) == {cpid, spid}
    assert {(p, SIGTERM) for p in (cpid, spid)} <= set(fake.signals)
    assert d.processes() == []
    assert "did not answer quit" in result.message


def test_stop_when_quit_is_ignored_waits_then_kills(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    clock = FakeClock(0.0)
    d = make_daemon(tmp_path, fake, clock=clock)
    d.start()
    fake.ignore_quit(d.paths.pipe_dir)
    result = d.stop(timeout_secs=4)
    assert result.quit_answered and result.killed_pids == (fake.daemons[next(iter(fake.daemons))].pid,)
    assert clock.monotonic() >= 6.0  # waited timeout + 2 s grace before signalling
    assert not d.control_pid() is not None


def test_stop_survivor_raises(tmp_path: Path) -> None:
    class Immortal(FakeMpsControl):
        def signal(self, pid: int, sig: int) -> None:
            self.signals.append((pid, sig))

    fake = Immortal()
    d = make_daemon(tmp_path, fake)
    d.start()
    fake.hang(d.paths.pipe_dir)
    with pytest.raises(MpsError, match="survived SIGKILL"):
        d.stop(timeout_secs=1)
    assert any(sig == SIGKILL for _, sig in fake.signals)


def test_stop_with_nothing_running(tmp_path: Path) -> None:
    result = make_daemon(tmp_path, FakeMpsControl()).stop()
    assert not result.was_running


def test_terminate_client_and_fault_status(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    d = make_daemon(tmp_path, fake)
    d.start()
    spid = fake.connect_client(d.paths.pipe_dir, 10)
    fake.connect_client(d.paths.pipe_dir, 11)
    fake.fault(d.paths.pipe_dir)
    assert d.server_status(spid) is ServerStatus.FAULT
    d.terminate_client(spid, 10)
    assert d.client_pids(spid) == [11]
    with pytest.raises(MpsError, match="terminate_client"):
        d.terminate_client(spid, 999)
    fake.disconnect_client(d.paths.pipe_dir, 11)
    assert d.server_status(spid) is ServerStatus.ACTIVE


def test_status_snapshot(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    d = make_daemon(tmp_path, fake)
    assert d.status().running is False
    d.start(MpsDefaults(active_thread_pct=70))
    spid = fake.connect_client(d.paths.pipe_dir, 42)
    st = d.status()
    assert st.running and st.healthy and st.default_active_thread_pct == 70.0
    assert st.to_dict()["servers"] == [{"pid": spid, "status": "ACTIVE", "client_pids": [42]}]
    fake.hang(d.paths.pipe_dir)
    st = d.status()
    assert st.running and not st.healthy and st.error


def test_fleet_one_daemon_per_gpu_and_foreign_daemons(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    fake.add_daemon(tmp_path / "nvidia-mps", tmp_path / "nvidia-log")  # started by hand, elsewhere
    clock = FakeClock(0.0)
    fleet = MpsFleet(
        MpsRoot(tmp_path / "mps"),
        [UUID, UUID2],
        fake,
        {"clock": clock, "base_env": {}},
    )
    defaults = {UUID: MpsDefaults(active_thread_pct=40)}
    assert [d.start(defaults.get(d.gpu_uuid)) for d in fleet.daemons()] == [True, True]
    pipes = {fake.daemon_at(fleet.daemon(u).paths.pipe_dir).visible_devices for u in (UUID, UUID2)}
    assert pipes == {UUID, UUID2}
    assert fake.daemon_at(fleet.daemon(UUID).paths.pipe_dir).active_thread_pct == 40.0
    assert fake.daemon_at(fleet.daemon(UUID2).paths.pipe_dir).active_thread_pct == 100.0
    assert [p.pipe_dir for p in fleet.foreign_daemons()] == [str(tmp_path / "nvidia-mps")]
    assert [s.running for s in fleet.statuses()] == [True, True]
    assert all(d.stop().quit_answered for d in fleet.daemons())


def test_client_env_from_plan_entry() -> None:
    a = agent(limit=1536 * MIB + 1, pct=50, prio=1)
    env = client_env(a, MpsPaths(Path("/s/pipe"), Path("/s/log")), gpu_uuid=UUID)
    assert env == {
        "CUDA_MPS_PIPE_DIRECTORY": "/s/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/s/log",
        "CUDA_VISIBLE_DEVICES": UUID,
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1537M",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_MPS_CLIENT_PRIORITY": "1",
    }
    plain = client_env(agent(limit=2 * GIB), "/p", device_ordinal=1)
    assert plain["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "1=2048M"
    assert "CUDA_VISIBLE_DEVICES" not in plain and "CUDA_MPS_LOG_DIRECTORY" not in plain


def test_defaults_become_set_default_commands() -> None:
    d = MpsDefaults(pinned_mem_limit_bytes=5 * GIB, active_thread_pct=100, client_priority=None)
    assert d.commands() == [
        "set_default_device_pinned_mem_limit 0 5120M",
        "set_default_active_thread_percentage 100",
    ]


def test_reply_parsers() -> None:
    assert parse_pids("123\n456\n") == [123, 456]
    assert parse_pids("") == []
    assert parse_server_status("ACTIVE\n") is ServerStatus.ACTIVE
    assert parse_server_status("Server 12 status: FAULT") is ServerStatus.FAULT
    assert parse_server_status("weird") is ServerStatus.UNKNOWN
    rows = parse_ps(
        "PID ID SERVER DEVICE NAMESPACE COMMAND\n"
        " 9741   0   6472 GPU-cb1213a3-d6a4-be7f 4026531836 python3 -m agent --port 8000\n"
    )
    assert rows[0].pid == 9741 and rows[0].server_pid == 6472
    assert rows[0].command == "python3 -m agent --port 8000"
    assert rows[0].device == "GPU-cb1213a3-d6a4-be7f"
    assert parse_ps("") == []
