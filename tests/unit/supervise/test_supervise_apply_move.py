"""``colo apply`` moving one agent from one GPU to the other (issue 23, item 4), on CPU: the two newsrooms
(``newsroom_doc.two_newsrooms``, 18 agents, ``spread``) on two fake 80 GiB GPUs, fake MPS, fake processes and
clock. A pin moves ``analyst_b`` from GPU 1 to GPU 0 and back: only it restarts (stopped on its old GPU, then
started as an MPS client of the new GPU's daemon with its limit); every other agent keeps its pid and stays
RUNNING at every tick. Planned afresh, the same pin would have moved ``balancer`` too — the running placement
is kept (``planning.placement_of``). A pin naming a GPU that is not there: exit 2, the file, field and value,
nothing changed.

The same move on two real GPUs: ``tests/gpu/test_two_gpus_gpu.py`` (not yet run on a GPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from colo.api.app import create_app
from colo.api.client import ApiClient
from colo.cli.main import app
from colo.clock import FakeClock
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.env import PINNED_DEVICE_MEM_LIMIT, PIPE_DIRECTORY
from colo.gpu.mps.fake import FakeMpsControl
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner, LaunchSpec
from colo.spec import load_config
from colo.supervise.orchestrator import Orchestrator
from colo.supervise.planning import plan_run
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState
from newsroom_doc import two_newsrooms
from testkit import short_state_dir

ROOT = Path(__file__).resolve().parents[3]
SIZED = ROOT / "examples" / "newsroom" / "colo.sized.yaml"
GPUS = [fake_gpu(0), fake_gpu(1)]
MOVER = "analyst_b"


def doc_with(pin: int | str | None = None) -> dict[str, Any]:
    """The two newsrooms, ``MOVER`` pinned to ``pin`` (None: no pin)."""
    doc: dict[str, Any] = two_newsrooms(yaml.safe_load(SIZED.read_text()))
    if pin is not None:
        doc["agents"][MOVER]["gpu"] = pin
    return doc


def written(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Room:
    """The two newsrooms up under one orchestrator with fake everything; ticks record what every agent was."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = short_state_dir()
        self.clock = FakeClock()
        self.runner = FakeRunner()
        self.path = written(tmp_path, "two.yaml", doc_with())
        self.orch = Orchestrator(
            load_config(self.path),
            config_path=self.path,
            state_dir=self.state,
            gpu_backend=FakeGpuBackend(GPUS),
            mps_control=FakeMpsControl(),
            runner=self.runner,
            probe=lambda check: HealthResult(True, "HTTP 200"),
            clock=self.clock,
        )
        self.orch.up()
        self.run(3)

    def run(self, secs: float, *, watch: dict[str, int] | None = None) -> None:
        """Tick for ``secs``; with ``watch`` (agent -> pid), assert at every tick that each is RUNNING with it."""
        for _ in range(int(secs / 0.5)):
            self.clock.advance(0.5)
            self.orch.tick()
            for name, pid in (watch or {}).items():
                s = self.orch.status(name)
                assert (s.state, s.pid) == (AgentState.RUNNING, pid), f"{name} during the move: {s}"

    def pids(self) -> dict[str, int]:
        return {s.name: s.pid for s in self.orch.statuses() if s.pid is not None}

    def gpus(self) -> dict[str, str | None]:
        return {s.name: s.gpu for s in self.orch.statuses()}

    def spec(self, name: str) -> LaunchSpec:
        pid = self.orch.status(name).pid
        assert pid is not None
        return self.runner.procs[pid].spec


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    r = Room(tmp_path)
    try:
        yield r
    finally:
        r.orch.down()


def test_the_two_newsrooms_run_one_per_gpu(room: Room) -> None:
    where = room.gpus()
    assert len(where) == 18 and all(s.state is AgentState.RUNNING for s in room.orch.statuses())
    assert {n for n, g in where.items() if g == "local:1"} == {n for n in where if n.endswith("_b")}


def test_a_pin_moves_one_agent_to_gpu_0_and_back_and_nothing_else_restarts(room: Room, tmp_path: Path) -> None:
    before = room.pids()
    rest = {n: p for n, p in before.items() if n != MOVER}
    old = room.runner.procs[before[MOVER]]
    spawned = len(room.runner.spawned)
    result = room.orch.apply(load_config(written(tmp_path, "move.yaml", doc_with(0))))
    assert (result.restarted, result.started, result.stopped) == ([MOVER], [], [])
    assert sorted(result.unchanged) == sorted(rest)
    room.run(6, watch=rest)  # every other agent RUNNING with the same pid at every tick
    assert room.orch.status(MOVER).state is AgentState.RUNNING
    assert room.pids() == {**rest, MOVER: room.pids()[MOVER]} and room.pids()[MOVER] != before[MOVER]
    assert len(room.runner.spawned) == spawned + 1  # one new process: the mover's
    assert old.exit is not None and old.signals  # stopped on GPU 1 (signalled) before it started on GPU 0
    spec, u0 = room.spec(MOVER), GPUS[0].uuid
    assert (spec.gpu, spec.gpu_uuid) == ("local:0", u0)
    env = spec.env_dict()
    assert env["CUDA_VISIBLE_DEVICES"] == u0 and env[PIPE_DIRECTORY].endswith(f"/mps/{u0}/pipe")
    assert env[PINNED_DEVICE_MEM_LIMIT] == old.spec.env_dict()[PINNED_DEVICE_MEM_LIMIT]  # its limit, on GPU 0
    assert spec.limit_bytes == old.spec.limit_bytes
    why = [e.message for e in room.orch.events() if e.agent == MOVER and e.kind == EventKind.RESTARTED]
    assert any("placement local:1 -> local:0" in m for m in why), why
    counts = {g.gpu.key: len(g.agents) for g in room.orch.snapshot().plan.gpus}
    assert counts == {"local:0": 10, "local:1": 8}

    moved = room.pids()
    back = room.orch.apply(load_config(written(tmp_path, "back.yaml", doc_with(1))))
    assert back.restarted == [MOVER]
    room.run(6, watch={n: p for n, p in moved.items() if n != MOVER})
    assert room.gpus()[MOVER] == "local:1" and room.spec(MOVER).env_dict()[PIPE_DIRECTORY].endswith(
        f"/mps/{GPUS[1].uuid}/pipe"
    )
    unpinned = room.orch.apply(load_config(room.path))  # the pin gone: it stays where it runs
    assert unpinned.restarted == [] and len(unpinned.unchanged) == 18


def test_planned_afresh_the_pin_would_also_move_balancer(room: Room, tmp_path: Path) -> None:
    config = load_config(written(tmp_path, "move.yaml", doc_with(0)))
    fresh = plan_run(config, GPUS, state_dir=room.state)
    where = {ap.name: ap.gpu.key for ap in fresh.plan.placed if ap.gpu is not None}
    assert where[MOVER] == "local:0" and where["balancer"] == "local:1"  # spread re-balances GPU 0's extra load
    kept = room.orch.make_plan(config)
    assert {ap.name: ap.gpu.key for ap in kept.plan.placed if ap.gpu is not None} == {**room.gpus(), MOVER: "local:0"}


def test_colo_apply_with_a_pin_to_a_gpu_that_is_not_there_exits_2_naming_file_field_and_value(
    room: Room, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ApiClient("http://testserver", "tok", client=TestClient(create_app(room.orch, token="tok")))
    monkeypatch.setattr("colo.api.client.orchestrator_client", lambda sd, **kw: client)
    before, spawned = room.pids(), len(room.runner.spawned)
    bad = written(tmp_path, "bad.yaml", doc_with(5))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if t.strip() == "gpu: 5")
    out = CliRunner().invoke(app, ["apply", str(bad), "--state-dir", str(room.state)])
    assert out.exit_code == 2, out.output
    assert f"{bad}:{line} agents.{MOVER}.gpu: gpu pin 5 matches no GPU (have: local:0, local:1)" in out.output
    # colo's one error path (cli/main.ColoGroup): a ColoError is its paragraph and exit 2, not a crash (exit 70)
    assert isinstance(out.exception, SystemExit) and "error: " in out.output
    room.run(2)
    assert room.pids() == before and len(room.runner.spawned) == spawned
    assert room.gpus()[MOVER] == "local:1"
