"""The read-only source of ``colo serve``: plan and GPUs, no agents, actions refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_fakes import NEWSROOM, TOKEN
from fastapi.testclient import TestClient

from colo.api.app import create_app
from colo.api.readonly import load_read_only
from colo.errors import PlanError, SupervisorError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.supervise.state import AgentState

AUTO = """
gpus: auto
models:
  m: {memory: 2GiB}
agents:
  a: {models: [m]}
  b: {models: [m]}
"""


def test_newsroom_without_gpu(tmp_path: Path) -> None:
    source = load_read_only(NEWSROOM, use_nvml=False, mps_root=tmp_path)
    statuses = source.snapshot().agents
    assert len(statuses) == 9
    assert {s.state for s in statuses} == {AgentState.STOPPED}
    assert source.snapshot().agent("critic").limit_bytes == source.plan.agent("critic").limit_bytes
    with pytest.raises(KeyError):
        source.snapshot().agent("nobody")
    with pytest.raises(SupervisorError, match="read-only"):
        source.restart("critic")
    with pytest.raises(KeyError):
        source.start("nobody")
    with pytest.raises(SupervisorError):
        source.apply(source.config)
    assert source.backend is None and source.fleet is None and source.snapshot().gpu.info["mps_enabled"] is False
    assert [e.seq for e in source.events()] == [1]


def test_routes_over_the_read_only_source(tmp_path: Path) -> None:
    client = TestClient(create_app(load_read_only(NEWSROOM, use_nvml=False, mps_root=tmp_path), token=TOKEN))
    assert client.get("/mps/allocation").json()["mps_resource_allocation"]["system_summary"]["total_agents"] == 9
    info = client.get("/gpu/info")
    assert info.status_code == 200 and info.json()["mps_enabled"] is False and info.json()["error"]
    r = client.post("/agents/critic/restart", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 409 and "colo up" in r.json()["error"]
    r = client.post("/apply", content=NEWSROOM.read_text(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 409


def test_auto_gpus_use_the_backend(tmp_path: Path) -> None:
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(AUTO)
    backend = FakeGpuBackend([fake_gpu(0), fake_gpu(1)])
    source = load_read_only(cfg, backend=backend, mps_root=Path("/tmp/colo-none"))
    assert [a.gpu.uuid for a in source.plan.placed if a.gpu] == [fake_gpu(0).uuid] * 2
    assert source.fleet is not None and source.snapshot().gpu.info["mps_enabled"] is False  # no daemon runs there
    with pytest.raises(PlanError, match="gpus: auto"):
        load_read_only(cfg, use_nvml=False)


def test_memory_from_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """policy.memory_source: db plans from measured/estimated figures, not the declared ones."""
    monkeypatch.setenv("COLO_STATE_DIR", str(tmp_path / "state"))
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(NEWSROOM.read_text().replace("policy:\n", "policy:\n  memory_source: db\n", 1))
    from_db = load_read_only(cfg, use_nvml=False, mps_root=tmp_path).plan
    declared = load_read_only(NEWSROOM, use_nvml=False, mps_root=tmp_path).plan
    sources = {m.source for a in from_db.agents for m in a.models}
    assert sources - {"declared"}
    assert {a.name: a.requirement_bytes for a in from_db.agents} != {
        a.name: a.requirement_bytes for a in declared.agents
    }
