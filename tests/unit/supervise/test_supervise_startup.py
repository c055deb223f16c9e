"""colo.supervise.startup with the fake MPS control and fake NVML: ``colo up`` starts (or adopts) one daemon
per MPS GPU and records the ones it started, undoes its starts when one fails, keeps an earlier orchestrator's
daemon on a GPU that now runs time-sliced as retiring, reads the GPUs through one publisher, and wires the
supervisor to the fleet and to that reading."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from colo.clock import FakeClock
from colo.errors import MpsError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.mps.root import MpsRoot
from colo.gpu.poller import GpuState
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner
from colo.supervise.fleet import NodeFleet
from colo.supervise.logs import AgentLogs
from colo.supervise.recovery.mps_hooks import FleetHooks
from colo.supervise.startup import publisher_for, start_mps, supervisor_for
from colo.supervise.store import Store
from colo.supervise.tune.history import UsageRecorder
from testkit import short_state_dir

U0, U1 = fake_gpu(0).uuid, fake_gpu(1).uuid


@pytest.fixture
def state() -> Path:
    # MPS pipe dirs must stay short (Unix socket paths): pytest's tmp_path is too long for them. The
    # supervise conftest removes the /tmp/cs* dirs a test made.
    return short_state_dir()


def _live(control: FakeMpsControl, root: Path, uuid: str) -> bool:
    try:
        control.daemon_at(MpsRoot.under_state_dir(root).for_gpu(uuid).pipe_dir)
    except KeyError:
        return False
    return True


def test_start_mps_starts_a_daemon_per_gpu_and_records_them(state: Path) -> None:
    control, store = FakeMpsControl(), Store(state / "colo.db")
    switch, started, adopted = start_mps(state, store, control, [U0, U1], [U0, U1], hooks=lambda: None)
    assert (started, adopted) == ([U0, U1], []) and sorted(switch.fleet.uuids()) == [U0, U1]
    assert switch.fleet.recorded() == sorted([U0, U1]) and switch.retiring == set()
    assert _live(control, state, U0) and _live(control, state, U1)
    # An orchestrator restarted on the same state dir adopts them, and starts nothing.
    _, again, kept = start_mps(state, store, control, [U0, U1], [U0, U1], hooks=lambda: None)
    assert (again, kept) == ([], [U0, U1])


def test_without_mps_gpus_the_fleet_exists_but_is_empty(state: Path) -> None:
    control = FakeMpsControl()
    switch, started, adopted = start_mps(state, Store(state / "colo.db"), control, [], [U0], hooks=lambda: None)
    assert (started, adopted, switch.fleet.uuids()) == ([], [], []) and control.daemons == {}


class _SecondStartFails(FakeMpsControl):
    """The fake control program whose launcher fails from the second daemon on."""

    def start_daemon(self, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> None:
        if self.daemons:
            self.fail_start = "no more daemons"
        super().start_daemon(env=env, timeout_secs=timeout_secs)


def test_a_daemon_that_cannot_start_stops_those_started_before(state: Path) -> None:
    control, store = _SecondStartFails(), Store(state / "colo.db")
    with pytest.raises(MpsError, match="no more daemons"):
        start_mps(state, store, control, [U0, U1], [U0, U1], hooks=lambda: None)
    assert not _live(control, state, U0) and not _live(control, state, U1)
    assert NodeFleet.from_record(state, control, store).recorded() == []  # nothing left recorded as ours


def test_an_earlier_daemon_on_a_gpu_now_time_sliced_is_kept_as_retiring(state: Path) -> None:
    control, store = FakeMpsControl(), Store(state / "colo.db")
    start_mps(state, store, control, [U0, U1], [U0, U1], hooks=lambda: None)
    # The next orchestrator's plan runs MPS on U0 only; its agents are still on both GPUs.
    switch, _, adopted = start_mps(state, store, control, [U0], [U0, U1], hooks=lambda: None)
    assert adopted == [U0] and switch.retiring == {U1} and sorted(switch.fleet.uuids()) == [U0, U1]
    # A GPU with no agents of this node is not taken in.
    other, _, _ = start_mps(state, store, control, [U0], [U0], hooks=lambda: None)
    assert other.retiring == set() and other.fleet.uuids() == [U0]


def test_publisher_reads_the_gpus_only_when_there_is_nvml(state: Path) -> None:
    clock = FakeClock()
    blind = publisher_for(None, None, state, clock)
    blind.poll(force=True)
    assert blind.poller is None and blind.reading().error is not None
    backend = FakeGpuBackend([fake_gpu(0), fake_gpu(1)])
    seeing = publisher_for(backend, None, state, clock)  # no fleet: the MPS root under the state dir
    seeing.poll(force=True)
    assert seeing.reading().error is None
    assert [g["uuid"] for g in seeing.reading().info["gpus"]] == [U0, U1]


def test_supervisor_watches_the_fleet_and_reads_memory_from_the_one_reading(state: Path) -> None:
    clock, store = FakeClock(), Store(state / "colo.db")
    switch, _, _ = start_mps(state, store, FakeMpsControl(), [U0], [U0], hooks=lambda: None)
    published = publisher_for(FakeGpuBackend([fake_gpu(0)]), switch.fleet, state, clock)
    usage = UsageRecorder(store, clock)
    sup = supervisor_for(
        FakeRunner(), lambda check: HealthResult(True, "ok"), clock, store, AgentLogs(state / "logs"),
        switch.fleet, published, fault_wait_secs=3.0, usage=usage,
    )
    assert isinstance(sup.mps, FleetHooks) and sup.mps.fleet is switch.fleet.mps and sup.usage is usage
    assert sup.gpu_memory is not None
    published.gpu = GpuState({"processes": [{"pid": os.getpid(), "used_memory_bytes": 5 * 2**20}]})
    assert sup.gpu_memory([os.getpid(), 999_999_999]) == {os.getpid(): 5 * 2**20}  # read from the reading
    # No NVML and no fleet: no MPS watch and no memory reading.
    bare = supervisor_for(
        FakeRunner(), lambda check: HealthResult(True, "ok"), clock, store, AgentLogs(state / "logs"),
        None, publisher_for(None, None, state, clock), fault_wait_secs=3.0, usage=usage,
    )
    assert bare.mps is None and bare.gpu_memory is None
