"""The MPS fault recovery machine: its phase table, and one GPU's recovery driven through every phase."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from colo.supervise.recovery.mps_recovery import (
    ALLOWED,
    MpsFault,
    Recoveries,
    Recovery,
    RecoveryPhase,
    RecoveryTransitionError,
    RecoveryTrigger,
    check_transition,
)
from colo.supervise.snapshots import EventKind


def test_every_phase_has_a_row_and_the_path_is_linear() -> None:
    assert set(ALLOWED) == set(RecoveryPhase)
    path = [RecoveryPhase.STOPPING, RecoveryPhase.WAITING, RecoveryPhase.RELAUNCHING, RecoveryPhase.DONE]
    for old, new in itertools.pairwise(path):
        check_transition(old, new)
    assert ALLOWED[RecoveryPhase.DONE] == frozenset()
    with pytest.raises(RecoveryTransitionError):
        check_transition(RecoveryPhase.STOPPING, RecoveryPhase.RELAUNCHING)
    rec = Recovery("GPU-x", RecoveryTrigger.SERVER_FAULT, 0.0, [], 0.0)
    with pytest.raises(RecoveryTransitionError):
        rec.move(RecoveryPhase.DONE, 1.0)


class _Hooks:
    def __init__(self) -> None:
        self.is_ready = False
        self.restarted: list[str] = []

    def faults(self) -> list[MpsFault]:
        return []

    def ready(self, gpu_uuid: str) -> bool:
        return self.is_ready

    def terminate_client(self, gpu_uuid: str, client_pid: int) -> None:
        return None

    def restart_daemon(self, gpu_uuid: str) -> None:
        self.restarted.append(gpu_uuid)

    def answering(self, gpu_uuid: str) -> bool:
        return True

    def end_hung(self, gpu_uuid: str) -> None:
        return None


def test_an_empty_gpu_goes_through_every_phase_and_restarts_a_daemon_stuck_in_fault() -> None:
    events: list[tuple[EventKind, str]] = []
    hooks = _Hooks()
    recs = Recoveries(mps=hooks, event=lambda k, a, m, g: events.append((k, m)), fault_wait_secs=5.0)
    fault = MpsFault("GPU-x", "MPS server 9 reports FAULT", trigger=RecoveryTrigger.CLIENT_MPS_ERROR)
    recs.begin(fault, None, [], (), 0.0)
    assert "GPU-x" in recs
    recs.tick(1.0, {}, lambda uuid: [])
    assert recs.active["GPU-x"].phase == RecoveryPhase.WAITING  # nothing to stop; server still FAULT
    recs.tick(6.0, {}, lambda uuid: [])
    assert hooks.restarted == ["GPU-x"]
    assert recs.active["GPU-x"].phase == RecoveryPhase.RELAUNCHING
    recs.tick(7.0, {}, lambda uuid: [])
    assert "GPU-x" not in recs
    (done,) = recs.recovered
    assert (done.seconds, done.daemon_restarted, done.trigger) == (7.0, True, RecoveryTrigger.CLIENT_MPS_ERROR)
    assert [k for k, _ in events] == [EventKind.MPS_FAULT, EventKind.DAEMON, EventKind.RESTARTED]


def test_fleet_hooks_read_fault_from_the_gpu_reading_and_ask_only_what_it_missed() -> None:
    import shutil
    import tempfile

    from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
    from colo.gpu.mps.fake import FakeMpsControl
    from colo.gpu.mps.fleet import MpsFleet
    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.poller import GpuPoller
    from colo.supervise.recovery.mps_hooks import FleetHooks

    root = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))  # MPS socket paths must stay short
    try:
        gpus = [fake_gpu(0), fake_gpu(1)]
        control = FakeMpsControl()
        fleet = MpsFleet(MpsRoot(root), [g.uuid for g in gpus], control)
        [d.start() for d in fleet.daemons()]
        for g in gpus:
            control.connect_client(fleet.daemon(g.uuid).paths.pipe_dir, 1000 + g.index)
        control.fault(fleet.daemon(gpus[1].uuid).paths.pipe_dir)
        reading = GpuPoller(FakeGpuBackend(gpus), fleet.root, control).read()
        hooks = FleetHooks(fleet, lambda: reading)
        sent = len(control.sent)
        (fault,) = hooks.faults()
        assert fault.gpu_uuid == gpus[1].uuid and "reports FAULT" in fault.detail
        assert len(control.sent) == sent  # both daemons seen whole in the reading: nothing asked again
        control.hang(fleet.daemon(gpus[1].uuid).paths.pipe_dir)
        partial = GpuPoller(FakeGpuBackend(gpus), fleet.root, control, command_timeout_secs=0.2).read()
        hooks = FleetHooks(fleet, lambda: partial)
        assert hooks.faults() == []  # the hung daemon is asked itself, and does not answer: skipped
    finally:
        [d.stop(1) for d in fleet.daemons()]
        shutil.rmtree(root, ignore_errors=True)
