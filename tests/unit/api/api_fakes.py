"""Test data for the API's tests on CPU: the newsroom example as a :class:`colo.api.fake_source.FakeSource`,
and one fake GPU whose MPS daemon serves two agents' processes."""

from __future__ import annotations

from pathlib import Path

from colo.api.fake_source import FakeSource
from colo.clock import SYSTEM_CLOCK, Clock
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import ClientProcess, GpuBackend
from colo.plan import Plan, inventory_slots, plan
from colo.spec import ColoConfig, load_config
from colo.supervise.snapshots import AgentStatus, ApplyResult, Event, EventKind
from colo.supervise.state import AgentState
from colo.units import GIB, MIB

__all__ = ["NEWSROOM", "TOKEN", "UUID0", "FakeSource", "gpu_source", "newsroom", "newsroom_source"]

ROOT = Path(__file__).resolve().parents[3]
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"
TOKEN = "s3cret-token-for-tests-0123456789"
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"


def newsroom() -> tuple[ColoConfig, Plan]:
    config = load_config(NEWSROOM)
    return config, plan(config, inventory_slots(config))


def running_status(p: Plan, name: str, pid: int, used: int | None = None, uuid: str = UUID0) -> AgentStatus:
    a = p.agent(name)
    return AgentStatus(
        name=name,
        state=AgentState.RUNNING,
        pid=pid,
        gpu="local:0",
        gpu_uuid=uuid,
        limit_bytes=a.limit_bytes,
        requirement_bytes=a.requirement_bytes,
        priority=a.priority,
        restarts=1,
        memory_used_bytes=used,
        memory_peak_bytes=used,
        models=a.model_ids,
    )


def newsroom_source(
    *,
    backend: GpuBackend | None = None,
    fleet: MpsFleet | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> FakeSource:
    """The newsroom plan with every agent RUNNING (pids 1000.., 100+i MiB used) and five events."""
    config, p = newsroom()
    statuses = [running_status(p, a.name, 1000 + i, (100 + i) * MIB) for i, a in enumerate(p.agents)]
    events = [Event(i, 1_700_000_000.0 + i, EventKind.STARTED, "critic", f"event {i}") for i in range(1, 6)]
    source = FakeSource(config, p, statuses, events=events, backend=backend, fleet=fleet, clock=clock)
    source.apply_result = ApplyResult(restarted=["critic"], unchanged=["analyst", "balancer"])
    return source


def gpu_source(tmp_path: Path, clock: Clock = SYSTEM_CLOCK) -> tuple[FakeSource, FakeMpsControl]:
    """One fake H100 whose MPS daemon (real MpsDaemon over the fake control program) serves two agents'
    processes (pids 1000, 1001), plus one stray non-MPS process."""
    gpu = fake_gpu(0, memory_used_bytes=3 * GIB)
    procs = [
        ClientProcess(1000, 0, gpu.uuid, 900 * MIB, True, ("python", "agent"), "python"),
        ClientProcess(1001, 0, gpu.uuid, 1200 * MIB, True, ("python", "agent"), "python"),
        ClientProcess(77777, 0, gpu.uuid, 300 * MIB, False, ("other",), "other"),
    ]
    control = FakeMpsControl()
    fleet = MpsFleet(MpsRoot(tmp_path / "mps"), [gpu.uuid], control)
    [d.start() for d in fleet.daemons()]
    pipe = fleet.daemon(gpu.uuid).paths.pipe_dir
    control.connect_client(pipe, 1000)
    control.connect_client(pipe, 1001)
    return newsroom_source(backend=FakeGpuBackend([gpu], procs), fleet=fleet, clock=clock), control
