"""A test double of the orchestrator (an ApiSource) and of an MPS fleet, for the API's tests on CPU."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from colo.errors import ColoError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import ClientProcess
from colo.plan import Plan, inventory_slots, plan
from colo.spec import ColoConfig, load_config
from colo.supervise.snapshots import AgentStatus, Event, EventKind
from colo.supervise.state import AgentState
from colo.units import GIB, MIB

ROOT = Path(__file__).resolve().parents[3]
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"
TOKEN = "s3cret-token-for-tests-0123456789"
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"


@dataclass
class FakeApplyResult:
    restarted: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


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


class FakeSource:
    """An in-memory orchestrator: statuses, events, a plan; records actions; can be told to fail."""

    def __init__(
        self,
        *,
        backend: FakeGpuBackend | None = None,
        fleet: MpsFleet | None = None,
        mps: bool = False,
    ) -> None:
        self._config, self._plan = newsroom()
        self._statuses = {
            a.name: running_status(self._plan, a.name, 1000 + i, (100 + i) * MIB)
            for i, a in enumerate(self._plan.agents)
        }
        self._events = [Event(i, 1_700_000_000.0 + i, EventKind.STARTED, "critic", f"event {i}") for i in range(1, 6)]
        self.backend = backend
        self.fleet = fleet
        self.mps = mps
        self.calls: list[tuple[str, str]] = []
        self.action_error: ColoError | None = None
        self.apply_error: ColoError | None = None
        self.applied: list[ColoConfig] = []
        self.apply_entered = threading.Event()
        self.apply_release: threading.Event | None = None

    def statuses(self) -> list[AgentStatus]:
        return list(self._statuses.values())

    def status(self, name: str) -> AgentStatus:
        return self._statuses[name]

    def _act(self, verb: str, name: str) -> None:
        self._statuses[name]  # KeyError for an unknown agent, like the orchestrator
        if self.action_error:
            raise self.action_error
        self.calls.append((verb, name))

    def start(self, name: str) -> None:
        self._act("start", name)

    def stop(self, name: str) -> None:
        self._act("stop", name)

    def restart(self, name: str) -> None:
        self._act("restart", name)

    def apply(self, config: ColoConfig) -> FakeApplyResult:
        self.apply_entered.set()
        if self.apply_release is not None:
            self.apply_release.wait(5)
        if self.apply_error:
            raise self.apply_error
        self.applied.append(config)
        self._config = config
        self._plan = plan(config, inventory_slots(config))
        return FakeApplyResult(restarted=["critic"], unchanged=sorted(config.agents)[:2])

    def events(self, since_seq: int = 0, limit: int = 200) -> list[Event]:
        return [e for e in self._events if e.seq > since_seq][:limit]

    def add_event(self, message: str) -> None:
        self._events.append(Event(len(self._events) + 1, 1_700_000_100.0, EventKind.RESTARTED, "scout", message))

    def current_plan(self) -> Plan:
        return self._plan

    def config(self) -> ColoConfig:
        return self._config

    def gpu_backend(self) -> FakeGpuBackend | None:
        return self.backend

    def mps_fleet(self) -> MpsFleet | None:
        return self.fleet

    def mps_enabled(self) -> bool:
        return self.mps


def gpu_source(tmp_path: Path) -> tuple[FakeSource, FakeMpsControl]:
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
    fleet.start_all()
    pipe = fleet.daemon(gpu.uuid).paths.pipe_dir
    control.connect_client(pipe, 1000)
    control.connect_client(pipe, 1001)
    return FakeSource(backend=FakeGpuBackend([gpu], procs), fleet=fleet, mps=True), control
