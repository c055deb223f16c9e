"""On a real GPU: colo's NVML backend and MPS daemons, with torch clients started under ``client_env``.

Every test runs its own MPS control daemon in a private state dir under /tmp (``<tmp>/mps/<uuid>/pipe``),
pinned to one GPU by UUID, and its fixture always quits it (killing it if it does not answer) and asserts no
nvidia-cuda-mps-control / -server process of that pipe dir is left. Clients are child pythons
(``sys.executable -c ...``) with ``os.environ`` + ``client_env(...)``; they are killed in teardown whatever
happens. Nothing here changes a GPU setting (compute mode, clocks, MIG).

Each test prints one ``GPU-RESULT <name>: ...`` summary line with the measured figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import pytest
from mps_daemons import Clients, MpsDaemons, gone, gpus_with_mps

from colo.errors import MpsError
from colo.gpu.mps.control import find_binary, scan_processes
from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults
from colo.gpu.mps.env import client_env
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.log import MpsLogKind, MpsLogReader
from colo.gpu.mps.replies import ServerStatus
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import ClientProcess, GpuSnapshot, NvmlBackend

pytestmark = pytest.mark.gpu

MIB = 1024**2
GIB = 1024**3

def result_line(name: str, text: str) -> None:
    print(f"\nGPU-RESULT {name}: {text}", flush=True)


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f}GiB"


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpus() -> list[GpuSnapshot]:
    return gpus_with_mps()


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    yield c
    c.close()


Started = MpsDaemons


@pytest.fixture
def started(state_dir: Path) -> Iterator[Started]:
    """Daemons a test starts; teardown quits each and asserts nothing of its pipe dir survives."""
    s = MpsDaemons()
    yield s
    leftovers = s.close()
    assert not leftovers, f"MPS processes left behind: {leftovers}"


def new_daemon(state_dir: Path, uuid: str, started: Started, **kw: Any) -> MpsDaemon:
    return started.new(MpsRoot.under_state_dir(state_dir), uuid, **kw)


@dataclass(frozen=True)
class Client:
    """What ``client_env`` reads of a plan entry (``colo.gpu.mps.env.ClientSettings``): the GPU layer needs no
    plan types."""

    name: str
    limit_bytes: int
    active_thread_pct: int = 100
    client_priority: int = 0


def by_size(rep: dict[str, Any]) -> dict[int, str]:
    """A probe client's answer per allocation size in bytes: "ok" or "oom"."""
    return dict((n, r) for n, r in rep["allocs"])


@pytest.fixture
def daemon(gpus: list[GpuSnapshot], state_dir: Path, started: Started) -> MpsDaemon:
    """A daemon for the first GPU started with no server-wide defaults (each client sets its own)."""
    d = new_daemon(state_dir, gpus[0].uuid, started)
    d.start(MpsDefaults())
    return d


def start_by_hand(binary: str, env: dict[str, str]) -> None:
    """``nvidia-cuda-mps-control -d`` as an operator would start it, outside colo."""
    subprocess.run([binary, "-d"], env=env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, timeout=30, check=True)


def agent(name: str, limit_bytes: int, uuid: str, *, pct: int = 100, prio: int = 0) -> Client:
    return Client(name, limit_bytes, pct, prio)


def wait_for(pred: Callable[[], bool], secs: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def nvml_row(uuid: str, pid: int) -> tuple[ClientProcess | None, str]:
    """The NVML row of ``pid`` on that GPU; if NVML reports host pids (another PID namespace), the only MPS
    client on that GPU. Returns (row, how it was matched)."""
    rows = [p for p in NvmlBackend().processes() if p.gpu_uuid == uuid]
    for r in rows:
        if r.pid == pid:
            return r, "pid"
    mps = [r for r in rows if r.is_mps_client]
    if len(mps) == 1:
        return mps[0], f"only MPS client (NVML pid {mps[0].pid} != {pid}: other PID namespace)"
    return None, f"no row for pid {pid} in {rows}"


def colo_cli(state_dir: Path, *args: str) -> dict[str, Any]:
    """``colo <args> --json`` in a child python (colo is not installed on the GPU machine: PYTHONPATH)."""
    env = dict(os.environ, COLO_STATE_DIR=str(state_dir))
    done = subprocess.run(
        [sys.executable, "-c", "from colo.cli.entry import main; main()", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"colo {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}"
    data: dict[str, Any] = json.loads(done.stdout)
    return data


# --- tests ---------------------------------------------------------------------------------------------


def test_daemon_lifecycle_defaults_status_and_logs(
    gpus: list[GpuSnapshot], state_dir: Path, started: Started, clients: Clients
) -> None:
    """start → health → defaults reach the first server → server ACTIVE with the client → log events →
    quit leaves nothing → a restart re-applies the defaults."""
    uuid = gpus[0].uuid
    d = new_daemon(state_dir, uuid, started)
    defaults = MpsDefaults(pinned_mem_limit_bytes=4 * GIB, active_thread_pct=50)
    t0 = time.monotonic()
    assert d.start(defaults) is True
    start_secs = time.monotonic() - t0
    assert d.healthy()
    assert d.default_active_thread_pct() == 50.0
    procs = d.processes()
    assert [p.kind for p in procs] == ["control"], procs
    assert procs[0].visible_devices == uuid
    assert d.server_pids() == []  # no server before the first client
    reader = MpsLogReader(d.paths.log_dir)
    assert any(e.kind is MpsLogKind.DAEMON_STARTED for e in reader.read_new())

    # A client with only the pipe dir (no limits of its own) gets the daemon's defaults.
    proc = clients.start({"CUDA_MPS_PIPE_DIRECTORY": str(d.paths.pipe_dir), "CUDA_VISIBLE_DEVICES": uuid}, [])
    rep = clients.report(proc)
    assert rep["free"] < 4 * GIB, f"default pinned limit not applied: free={rep['free']}"
    spids = started.note_servers(d)
    assert len(spids) == 1, spids
    assert wait_for(lambda: d.server_status(spids[0]) is ServerStatus.ACTIVE, 15), d.server_status(spids[0])
    listed = d.client_pids(spids[0])
    assert listed, "get_client_list is empty while a client is connected"
    pid_seen = rep["pid"] in listed
    ps_rows = d.ps()
    clients.release(proc)
    events: list[Any] = []

    def saw_exit() -> bool:
        events.extend(reader.read_new())
        return any(e.kind is MpsLogKind.CLIENT_DISCONNECTED for e in events)

    disconnected = wait_for(saw_exit, 15)
    connected = [e for e in events if e.kind is MpsLogKind.CLIENT_CONNECTED]
    raw = ""
    for name in ("control.log", "server.log"):
        with contextlib.suppress(OSError):
            raw += f"--- {name}\n" + (d.paths.log_dir / name).read_text()[-3000:]
    assert connected, f"no connect event:\n{raw}"
    own_pid_logged = any(e.client_pid == rep["pid"] for e in connected)
    assert disconnected, f"no disconnect event:\n{raw}"

    result = d.stop(timeout_secs=10)
    assert result.was_running
    assert scan_processes(d.paths.pipe_dir) == []
    assert all(gone(p) for p in spids)

    # Defaults are lost on quit: a restart applies them again.
    assert d.start(defaults) is True
    assert d.default_active_thread_pct() == 50.0
    result_line(
        "mps_lifecycle",
        f"start {start_secs:.2f}s, health ok, default thread 50% read back, client free={gib(rep['free'])} under "
        f"4GiB default limit, SMs seen {rep['sms']} at the 50% default, server {spids[0]} ACTIVE, clients {listed} (own pid {'seen' if pid_seen else 'NOT seen'}), "
        f"ps rows {len(ps_rows)}, log events connect={len(connected)} (own pid {'logged' if own_pid_logged else 'NOT logged'}) "
        f"disconnect=yes, quit: {result.message}; "
        f"restart re-applied defaults",
    )


def test_client_limit_2gib_is_enforced_and_visible_in_gpu_info(
    daemon: MpsDaemon, state_dir: Path, started: Started, clients: Clients
) -> None:
    d, uuid = daemon, daemon.gpu_uuid
    env = client_env(agent("probe", 2 * GIB, uuid), d.paths, gpu_uuid=uuid)
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M"
    proc = clients.start(env, [512 * MIB, 2 * GIB])
    rep = clients.report(proc)
    allocs = by_size(rep)
    assert allocs[512 * MIB] == "ok", rep
    assert allocs[2 * GIB] == "oom", f"2 GiB allocation under a 2 GiB limit did not fail with OOM: {rep}"
    assert rep["free"] < 2 * GIB, rep
    started.note_servers(d)

    row, how = nvml_row(uuid, rep["pid"])
    assert row is not None, how
    assert row.is_mps_client, row
    assert row.used_memory_bytes is not None and row.used_memory_bytes >= 256 * MIB, row

    info = colo_cli(state_dir, "gpu", "info")
    assert info["mps_enabled"] is True and info["mps"]["enabled"] is True and info["mps"]["control_process"]
    assert info["mps"]["pipe_dir"] == str(d.paths.pipe_dir)
    rows = [p for p in info["processes"] if p["gpu_uuid"] == uuid and p["is_mps_client"]]
    mine = [p for p in rows if p["pid"] == row.pid]
    assert mine, f"client not in colo gpu info: {info['processes']}"
    assert mine[0]["used_memory_bytes"] and mine[0]["used_memory_bytes"] >= 256 * MIB
    status = colo_cli(state_dir, "mps", "status", "--gpu", uuid)
    drow = status["daemons"][0]
    assert drow["healthy"] and drow["servers"] and drow["servers"][0]["status"] == "ACTIVE", drow
    clients.release(proc)
    result_line(
        "limit_2GiB",
        f"free after context {gib(rep['free'])}; alloc 512MiB ok; alloc 2GiB failed OOM as expected; NVML used="
        f"{gib(row.used_memory_bytes)} (matched by {how}); colo gpu info lists it as MPS client with "
        f"{gib(mine[0]['used_memory_bytes'])}, limit {gib(mine[0]['mps_limit_bytes'])}; "
        f"colo mps status: server {drow['servers'][0]['pid']} ACTIVE",
    )


def test_two_clients_get_their_own_limits_and_thread_pct(daemon: MpsDaemon, started: Started, clients: Clients) -> None:
    d, uuid, paths = daemon, daemon.gpu_uuid, daemon.paths
    env_small = client_env(agent("small", 1 * GIB, uuid, pct=100), paths, gpu_uuid=uuid)
    env_big = client_env(agent("big", 3 * GIB, uuid, pct=25, prio=1), paths, gpu_uuid=uuid)
    small = clients.start(env_small, [1 * GIB])
    big = clients.start(env_big, [int(1.5 * GIB), 3 * GIB])
    rs, rb = clients.report(small), clients.report(big)  # both alive at once on one server
    spids = started.note_servers(d)
    assert len(spids) == 1
    both = d.client_pids(spids[0])
    assert len(both) >= 2, both
    a_small, a_big = by_size(rs), by_size(rb)
    assert rs["free"] < 1 * GIB, rs
    assert 1 * GIB < rb["free"] < 3 * GIB, rb
    assert a_small[1 * GIB] == "oom", rs
    assert a_big[int(1.5 * GIB)] == "ok", rb
    assert a_big[3 * GIB] == "oom", rb
    # Active thread %: a ceiling on SMs the client sees (granted in whole TPCs of 2 SMs).
    full, low = rs["sms"], rb["sms"]
    assert low < full, (low, full)
    assert low <= math.ceil(full * 25 / 100) + 2, (low, full)
    clients.release(small)
    clients.release(big)
    result_line(
        "two_clients",
        f"1GiB client free={gib(rs['free'])}, alloc 1GiB OOM; 3GiB client free={gib(rb['free'])}, alloc 1.5GiB ok, "
        f"alloc 3GiB OOM; one server {spids[0]} with clients {both}; SMs seen: 100% -> {full}, 25% -> {low}",
    )


def test_unanswered_quit_is_killed_and_foreign_daemons_are_refused(
    gpus: list[GpuSnapshot], state_dir: Path, started: Started
) -> None:
    """Faults provoked safely: a daemon in our pipe dir pinned elsewhere is refused, one started by hand for the
    same GPU is adopted, and a daemon that does not answer (SIGSTOP) is killed by stop()."""
    uuid = gpus[0].uuid
    d = new_daemon(state_dir, uuid, started, command_timeout_secs=3.0)
    d.prepare_dirs()
    by_hand = dict(d.env(), CUDA_VISIBLE_DEVICES="0")
    binary = find_binary()
    assert binary is not None
    start_by_hand(binary, by_hand)
    assert wait_for(lambda: d.control_pid() is not None, 10)
    with pytest.raises(MpsError, match="pinned to") as refused:
        d.start()
    first = d.stop(timeout_secs=5)
    assert first.was_running and scan_processes(d.paths.pipe_dir) == []

    start_by_hand(binary, d.env())
    assert wait_for(d.healthy, 10)
    assert d.start(MpsDefaults(active_thread_pct=70)) is False  # adopted, defaults applied
    assert d.default_active_thread_pct() == 70.0

    pid = d.control_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not d.healthy()
        t0 = time.monotonic()
        result = d.stop(timeout_secs=2)
        secs = time.monotonic() - t0
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    assert not result.quit_answered and pid in result.killed_pids, result
    assert scan_processes(d.paths.pipe_dir) == []
    result_line(
        "mps_faults",
        f"daemon pinned to CUDA_VISIBLE_DEVICES=0 refused (...{str(refused.value).partition(' but ')[2][:60]}); "
        "hand-started daemon "
        f"adopted with defaults; SIGSTOPped daemon: {result.message} in {secs:.1f}s; nothing left",
    )


def test_one_daemon_per_gpu_second_gpu_is_device_0(
    gpus: list[GpuSnapshot], state_dir: Path, started: Started, clients: Clients
) -> None:
    if len(gpus) < 2:
        pytest.skip(f"needs 2 GPUs, NVML sees {len(gpus)}: one daemon per GPU is checked on a 2-GPU machine")
    u0, u1 = gpus[0].uuid, gpus[1].uuid
    root = MpsRoot.under_state_dir(state_dir)
    fleet = MpsFleet(root, [u0, u1])
    started.daemons.extend(fleet.daemons())
    assert [d.start() for d in fleet.daemons()] == [True, True]
    c0, c1 = fleet.daemon(u0).control_pid(), fleet.daemon(u1).control_pid()
    assert c0 and c1 and c0 != c1
    assert [p.visible_devices for p in fleet.daemon(u1).processes()] == [u1]
    env = client_env(agent("second", 1 * GIB, u1), root.for_gpu(u1), gpu_uuid=u1)
    proc = clients.start(env, [1 * GIB])
    rep = clients.report(proc)
    assert rep["count"] == 1, rep
    if rep["uuid"]:
        assert u1.lower().endswith(rep["uuid"].lower().removeprefix("gpu-")), (rep["uuid"], u1)
    assert rep["free"] < 1 * GIB and by_size(rep)[1 * GIB] == "oom", rep
    s1 = started.note_servers(fleet.daemon(u1))
    s0 = started.note_servers(fleet.daemon(u0))
    assert len(s1) == 1 and s0 == [], (s0, s1)
    row, how = nvml_row(u1, rep["pid"])
    assert row is not None and row.gpu_uuid == u1, how
    clients.release(proc)
    assert all(d.stop().was_running for d in fleet.daemons())
    result_line(
        "multi_gpu",
        f"daemons {c0} (gpu0) and {c1} (gpu1); client on gpu1 sees {rep['count']} device (uuid {rep['uuid']}), "
        f"free={gib(rep['free'])} under 1GiB, alloc 1GiB OOM; servers gpu0={s0} gpu1={s1}; NVML row on gpu1 ({how})",
    )
