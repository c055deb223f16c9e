"""The orchestrator's side of colo tune on CPU (fake GPUs, MPS, processes and clock): the usage history it
records from the GPU reading and the health body, and the rollback of a tuned limit that ran out of memory —
within one poll, an event, nothing else restarted."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from colo.api.app import create_app
from colo.api.client import ApiClient
from colo.cli.main import app
from colo.clock import FakeClock
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.nvml import ClientProcess
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner
from colo.spec import load_config_text
from colo.spec.config import ColoConfig, HealthCheck
from colo.supervise.orchestrator import Orchestrator
from colo.supervise.snapshots import EventKind, Shape, UsageSample
from colo.supervise.state import AgentState
from colo.supervise.tune import limits_file
from colo.units import GIB, MIB

CFG = """
version: 1
gpus: auto
policy: {history_window: 10s}
models:
  small: {memory: 1GiB}
agents:
  hog: {models: [small], command: [bin-hog], margin: 0.5GiB, health: {type: http, url: "http://127.0.0.1:9/health"}}
  ok: {models: [small], command: [bin-ok], margin: 0.5GiB, health: {type: none, start_secs: 1}}
"""


@pytest.fixture
def state() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ct", dir="/tmp"))  # MPS pipe dirs must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


BODY = {"status": "ready", "largest_batch": {"small": {"rows": 32, "seq_len": 512, "new_tokens": 0}}, "requests": 7}


def hog_tuned_to_640_mib(cfg: ColoConfig, reason: str = "") -> dict[str, limits_file.TunedEntry]:
    """The tuned-limits file's rows: hog tuned down from its 1.5 GiB policy limit to 640 MiB (600 MiB peak)."""
    return {"hog": limits_file.TunedEntry(
        640 * MIB, 600 * MIB, int(1.5 * GIB), limits_file.agent_key(cfg, "hog"), reason, 1.0)}


class World:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.clock = FakeClock()
        self.runner = FakeRunner()
        self.backend = FakeGpuBackend([fake_gpu(0, memory_total_bytes=10 * GIB)])
        self.body: dict[str, object] = dict(BODY)

    def probe(self, check: HealthCheck) -> HealthResult:
        return HealthResult(True, "HTTP 200", dict(self.body))

    def up(self, cfg: ColoConfig) -> Orchestrator:
        orch = Orchestrator(
            cfg, state_dir=self.state, gpu_backend=self.backend, mps_control=FakeMpsControl(), runner=self.runner,
            probe=self.probe, clock=self.clock,
        )
        orch.up()
        self.run(orch, 3)
        return orch

    def up_with_hog_tuned(self, cfg: ColoConfig, reason: str = "") -> Orchestrator:
        """:meth:`up` after writing hog's tuned limit (640 MiB) to the state dir's tuned-limits file."""
        limits_file.save(self.state / "tuned_limits.json", hog_tuned_to_640_mib(cfg, reason))
        return self.up(cfg)

    def run(self, orch: Orchestrator, secs: float, step: float = 0.5) -> None:
        for _ in range(int(secs / step)):
            self.clock.advance(step)
            orch.tick()

    def use(self, orch: Orchestrator, **used: int) -> None:
        uuid = fake_gpu(0).uuid
        procs = []
        for name, b in used.items():
            pid = orch.status(name).pid
            assert pid is not None
            procs.append(ClientProcess(pid, 0, uuid, b, True))
        self.backend.set_processes(procs)


def config() -> ColoConfig:
    return load_config_text(CFG, "t.yaml")


def test_history_is_recorded_per_window_from_nvml_and_the_health_body(state: Path) -> None:
    w = World(state)
    orch = w.up(config())
    w.use(orch, hog=700 * MIB, ok=300 * MIB)
    w.run(orch, 11)
    w.use(orch, hog=900 * MIB, ok=300 * MIB)
    w.run(orch, 21)
    rows = orch.store.usage()
    hog = [r for r in rows if r.agent == "hog"]
    assert len(hog) >= 2 and max(r.peak_bytes for r in hog) == 900 * MIB
    assert all(r.limit_bytes == int(1.5 * GIB) and r.gpu == "local:0" for r in hog)
    assert hog[-1].shapes == (Shape("small", 32, 512, 0),)
    assert [r for r in rows if r.agent == "ok"][-1].shapes == ()  # no health body: a command agent's case
    snap = orch.snapshot()
    assert {u.agent for u in snap.usage} == {"hog", "ok"} and snap.usage_rows == len(rows)
    orch.down()


def test_a_tuned_limit_that_runs_out_of_memory_is_rolled_back_alone(state: Path) -> None:
    cfg = config()
    path = state / "tuned_limits.json"
    limits_file.save(path, hog_tuned_to_640_mib(cfg, "peak 600 MiB"))
    w = World(state)
    orch = w.up(cfg)
    assert orch.snapshot().plan.agent("hog").limit_source == "tuned"
    assert orch.status("hog").limit_bytes == 640 * MIB
    ok_pid, hog_pid = orch.status("ok").pid, orch.status("hog").pid
    with open(state / "logs" / "hog.log", "a") as fh:
        fh.write("CUDA out of memory on a request to small (batch 32 rows, 1 request(s)): CUDA out of memory.\n")
    w.run(orch, 0.5)  # one tick: the log is read, the rollback decided and the restart begun
    rolled = [e for e in orch.events() if e.kind == EventKind.ROLLED_BACK]
    assert [e.agent for e in rolled] == ["hog"] and "1.5 GiB" in rolled[0].message
    assert orch.snapshot().plan.agent("hog").limit_source == "rolled back"
    w.run(orch, 5)
    assert orch.status("hog").state == AgentState.RUNNING and orch.status("hog").pid != hog_pid
    assert orch.status("hog").limit_bytes == int(1.5 * GIB)
    assert w.runner.last("bin-hog").spec.limit_bytes == int(1.5 * GIB)
    assert orch.status("ok").pid == ok_pid and orch.status("ok").restarts == 0  # nothing else restarted
    assert limits_file.load(path)["hog"].rolled_back_at is not None
    # a second out-of-memory error under the restored limit is the agent's own: no second rollback
    with open(state / "logs" / "hog.log", "a") as fh:
        fh.write("torch.OutOfMemoryError: CUDA out of memory.\n")
    w.run(orch, 2)
    assert len([e for e in orch.events() if e.kind == EventKind.ROLLED_BACK]) == 1
    orch.down()
    # the next plan of that state dir keeps the old limit
    again = World(state)
    orch2 = again.up(cfg)
    assert orch2.status("hog").limit_bytes == int(1.5 * GIB)
    orch2.down()


def test_a_507_count_in_the_health_body_also_rolls_back(state: Path) -> None:
    w = World(state)
    orch = w.up_with_hog_tuned(config())
    w.body["out_of_memory"] = 1
    w.run(orch, 30)  # at least one health interval (5 s)
    assert [e.agent for e in orch.events() if e.kind == EventKind.ROLLED_BACK] == ["hog"]
    assert orch.status("hog").limit_bytes == int(1.5 * GIB)
    orch.down()


def test_no_rollback_without_a_tuned_limit(state: Path) -> None:
    w = World(state)
    orch = w.up(config())
    with open(state / "logs" / "hog.log", "a") as fh:
        fh.write("torch.OutOfMemoryError: CUDA out of memory.\n")
    w.run(orch, 2)
    assert any(e.kind == EventKind.OOM for e in orch.events())
    assert not any(e.kind == EventKind.ROLLED_BACK for e in orch.events())
    orch.down()


def test_a_tuned_agent_that_dies_of_out_of_memory_is_rolled_back(state: Path) -> None:
    """A command agent (or the built-in agent's device probe) may just die: its last words name the OOM."""
    w = World(state)
    orch = w.up_with_hog_tuned(config())
    pid = orch.status("hog").pid
    assert pid is not None
    with open(state / "logs" / "hog.log", "a") as fh:
        fh.write("ERROR agent hog: device round trip failed: CUDA error: out of memory; exiting to be restarted\n")
    w.runner.exit(pid, code=4)
    w.run(orch, 0.5)
    assert [e.agent for e in orch.events() if e.kind == EventKind.ROLLED_BACK] == ["hog"]
    w.run(orch, 5)
    assert orch.status("hog").limit_bytes == int(1.5 * GIB) and orch.status("hog").state == AgentState.RUNNING
    orch.down()


BERT = "google/bert_uncased_L-2_H-128_A-2"
TUNE_CFG = f"""
version: 1
gpus: [{{memory: 10GiB}}]
policy: {{history_window: 10s}}
models:
  {BERT}: {{memory: 1GiB, batch_size: 32, max_seq_len: 512}}
agents:
  hog: {{models: [{BERT}], command: [bin-hog], margin: 0.5GiB, health: {{type: none, start_secs: 1}}}}
  calm: {{models: [{BERT}], port: 9301, margin: 0.5GiB}}
"""


def test_tune_apply_while_a_limit_rolls_back_keeps_both(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`colo tune --apply` asks the running orchestrator (the tuned-limits file's one writer) while that
    orchestrator rolls another agent's tuned limit back: both changes end up in the file and in the plan."""
    cfg_path = tmp_path / "colo.yaml"
    cfg_path.write_text(TUNE_CFG)
    cfg = load_config_text(TUNE_CFG, "colo.yaml")
    path = state / "tuned_limits.json"
    limits_file.update(path, lambda e: hog_tuned_to_640_mib(cfg, "peak 600 MiB"))
    w = World(state)
    orch = w.up(cfg)
    now = time.time()
    worst = (Shape(BERT, 32, 512, 0),)
    orch.store.add_usage(  # calm's history: 20 windows at 700 MiB, its worst case served
        [UsageSample("calm", now - 300 + 10 * i, now - 290 + 10 * i, 700 * MIB, int(1.5 * GIB), 5, "local:0", worst, 0, 4)
         for i in range(20)], keep_after=0.0, max_rows=1000,
    )
    client = TestClient(create_app(orch, token="tok"))
    monkeypatch.setattr("colo.api.client.orchestrator_client", lambda sd, **kw: ApiClient("http://testserver", "tok", client=client))
    done: list[Any] = []
    tune = threading.Thread(target=lambda: done.append(
        CliRunner().invoke(app, ["tune", str(cfg_path), "--state-dir", str(state), "--apply", "--json"])))
    with open(state / "logs" / "hog.log", "a") as fh:
        fh.write("torch.OutOfMemoryError: CUDA out of memory.\n")
    tune.start()
    w.run(orch, 0.5)  # the rollback, while the tune is on its way
    tune.join(60)
    assert done and done[0].exit_code == 0, done[0].output if done else "colo tune did not finish"
    assert json.loads(done[0].stdout)["tuned"] == ["calm"]
    entries = limits_file.load(path)
    assert entries["hog"].rolled_back_at is not None  # the rollback was kept
    assert entries["calm"].limit_bytes == 768 * MIB and entries["calm"].previous_limit_bytes == int(1.5 * GIB)
    plan = orch.snapshot().plan
    assert plan is not None
    assert (plan.agent("hog").limit_source, plan.agent("calm").limit_source) == ("rolled back", "tuned")
    w.run(orch, 5)
    assert orch.status("hog").limit_bytes == int(1.5 * GIB) and orch.status("calm").limit_bytes == 768 * MIB
    orch.down()
