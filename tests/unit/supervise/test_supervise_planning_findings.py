"""The plan knows better than the declared numbers: memory findings from the model DB or the estimate.

Every caller sees the same findings (they come out of ``colo.supervise.planning``); ``colo up``, ``colo apply``,
``POST /apply`` and a reload refuse a plan that predicts an agent runs out of memory unless forced; the newsroom keeps the seed's numbers (and its
findings); ``colo.sized.yaml`` plans clean. Estimates of catalog models need no torch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from colo import units
from colo.api.app import create_app
from colo.api.client import ApiClient
from colo.api.readonly import load_read_only
from colo.cli import up_cmd
from colo.cli.main import app
from colo.clock import FakeClock
from colo.errors import ProfileError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.fake import FakeMpsControl
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner
from colo.memory import estimate as est
from colo.memory.db import ModelDB, ModelEntry, Provenance
from colo.spec import load_config
from colo.supervise import planning
from colo.supervise.orchestrator import Orchestrator

runner = CliRunner()
MINI = "sentence-transformers/all-MiniLM-L6-v2"
RTX = "NVIDIA GeForce RTX 3090"


@pytest.fixture(autouse=True)
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cpf", dir="/tmp"))
    monkeypatch.setenv("COLO_STATE_DIR", str(d))  # an empty model DB unless a test writes one
    yield d
    shutil.rmtree(d, ignore_errors=True)


def memory_findings(findings: Any) -> dict[str, tuple[str, str]]:
    return {f.agent: (f.severity, f.message) for f in findings if f.topic == "memory" and MINI in f.message}


def test_newsroom_keeps_the_seeds_numbers_and_says_which_will_run_out(newsroom_path: Path) -> None:
    planned = planning.plan_config(load_config(newsroom_path))
    assert planned.plan.agent("memory").limit_bytes == units.GIB  # the seed's table: 0.5 GiB + 0.5 GiB margin
    mini = memory_findings(planned.plan.findings)
    assert set(mini) == {"memory", "newsreader"}
    severity, message = mini["memory"]
    assert severity == "error"
    assert message.startswith(f"memory: {MINI} declares 0.5 GiB; its worst case 32 × 512 needs ~1.1 GiB (estimate)")
    assert message.endswith("— it will run out of memory; raise `memory` or plan with --from-db")
    # the bert-tiny agents need more than declared, but their margin covers it: a warning
    tiny = [f for f in planned.plan.findings if f.agent == "analyst" and f.topic == "memory"]
    assert [f.severity for f in tiny] == ["warning"] and "only the agent's margin covers it;" in tiny[0].message


def test_a_measurement_on_the_planned_gpu_wins_and_is_labelled(newsroom_path: Path, state: Path) -> None:
    db = ModelDB(state / "model_db.json")
    db.put(ModelEntry(
        model=MINI, dtype="float32", batch_size=32, seq_len=512, new_tokens=0, kind="measured",
        nvml_peak_bytes=960 * units.MIB, weights_bytes=87 * units.MIB, reserved_peak_bytes=300 * units.MIB,
        overhead_bytes=660 * units.MIB, provenance=Provenance(gpu=RTX, date="2026-11-21T18:00:00+00:00"),
    ))
    db.save()
    mini = memory_findings(planning.plan_config(load_config(newsroom_path)).plan.findings)
    severity, message = mini["memory"]
    assert severity == "warning"  # 960 MiB fits the 1 GiB limit, barely
    assert f"needs ~0.94 GiB (measured on {RTX})" in message


def test_the_estimate_needs_no_torch(newsroom_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_torch = planning.plan_config(load_config(newsroom_path)).plan.findings

    def no_torch(model_id: str, path: str | None) -> est.ModelShape:
        raise ProfileError("estimating needs PyTorch and transformers")

    monkeypatch.setattr(est, "_meta_shape", no_torch)
    est._cached_shape.cache_clear()
    try:
        assert planning.plan_config(load_config(newsroom_path)).plan.findings == with_torch
    finally:
        est._cached_shape.cache_clear()


def test_every_caller_sees_the_same_findings(newsroom_path: Path, state: Path) -> None:
    config = load_config(newsroom_path)
    backend = FakeGpuBackend([fake_gpu(0, name=RTX, memory_total_bytes=24 * units.GIB)])
    offline = planning.plan_config(config).plan.findings
    orch = Orchestrator(config, state_dir=state, gpu_backend=backend)
    assert orch.make_plan(config, force=True).plan.findings == offline
    served = load_read_only(newsroom_path, backend=backend).snapshot().plan
    assert served is not None and served.findings == offline
    result = runner.invoke(app, ["validate", str(newsroom_path), "--json"])
    found = json.loads(result.stdout)["files"][0]["findings"]
    assert {"severity": "error", "where": "agents.memory.memory", "message": mini_message(offline)} in found


def mini_message(findings: Any) -> str:
    return memory_findings(findings)["memory"][1]


def test_up_refuses_a_plan_that_runs_out_of_memory_unless_forced(
    newsroom_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Path] = []
    monkeypatch.setattr(up_cmd, "up_foreground", lambda cfg, path, sd, **kw: ran.append(path))
    refused = runner.invoke(app, ["up", str(newsroom_path), "--state-dir", str(state)])
    assert refused.exit_code == 2 and ran == []
    assert "memory: memory: sentence-transformers/all-MiniLM-L6-v2 declares 0.5 GiB" in refused.output
    assert "--force" in refused.output
    forced = runner.invoke(app, ["up", str(newsroom_path), "--state-dir", str(state), "--force"])
    assert forced.exit_code == 0, forced.output
    assert ran == [newsroom_path]


def test_the_sized_newsroom_plans_clean(newsroom_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sized = newsroom_path.with_name("colo.sized.yaml")
    planned = planning.plan_config(load_config(sized))
    assert planned.plan.findings == () and planned.plan.unplaced == ()
    assert sorted(a.name for a in planned.plan.agents) == sorted(load_config(newsroom_path).agents)
    assert runner.invoke(app, ["validate", str(sized)]).exit_code == 0
    ran: list[Path] = []
    monkeypatch.setattr(up_cmd, "up_foreground", lambda cfg, path, sd, **kw: ran.append(path))
    assert runner.invoke(app, ["up", str(sized), "--state-dir", str(state)]).exit_code == 0 and ran == [sized]


# --- every action of a running colo refuses the same plans (colo up, colo apply, POST /apply, SIGHUP) ---------


def running(sized: Path, state: Path) -> Orchestrator:
    """An orchestrator up on the sized newsroom (a plan without findings), fake processes and GPU."""
    backend = FakeGpuBackend([fake_gpu(0, memory_total_bytes=80 * units.GIB)])
    orch = Orchestrator(
        load_config(sized), config_path=sized, state_dir=state, gpu_backend=backend, mps_control=FakeMpsControl(),
        runner=FakeRunner(), probe=lambda check: HealthResult(True, "HTTP 200"), clock=FakeClock(),
    )
    orch.up()
    return orch


def api_client(orch: Orchestrator) -> ApiClient:
    return ApiClient("http://testserver", "tok", client=TestClient(create_app(orch, token="tok")))


def test_apply_refuses_a_plan_that_runs_out_of_memory_unless_forced(newsroom_path: Path, state: Path) -> None:
    sized = newsroom_path.with_name("colo.sized.yaml")
    orch = running(sized, state)
    try:
        before = orch.config()
        with pytest.raises(planning.PredictedOutOfMemory) as refused:
            orch.apply(load_config(newsroom_path))
        assert mini_message(orch.make_plan(load_config(newsroom_path), force=True).plan.findings) in str(refused.value)
        assert orch.config() is before and orch.snapshot().plan.findings == ()  # nothing changed
        orch.apply(load_config(newsroom_path), force=True)
        assert orch.config() is not before and memory_findings(orch.snapshot().plan.findings)
    finally:
        orch.down()


def test_post_apply_refuses_it_as_colo_up_does_and_takes_force(newsroom_path: Path, state: Path) -> None:
    orch = running(newsroom_path.with_name("colo.sized.yaml"), state)
    try:
        http = TestClient(create_app(orch, token="tok"))
        auth = {"Authorization": "Bearer tok", "Content-Type": "application/yaml"}
        text = newsroom_path.read_text()
        r = http.post("/apply", content=text, headers=auth)
        assert r.status_code == 422 and r.json()["predicted_oom"] is True
        assert "the plan predicts out-of-memory" in r.json()["error"] and "--force" in r.json()["hint"]
        bad = http.post("/apply", content=text + "\nforce: maybe\n", headers=auth)
        assert bad.status_code == 422 and bad.json()["field"] == "force"
        r = http.post("/apply", content=text + "\nforce: true\n", headers=auth)
        assert r.status_code == 200, r.text
        assert memory_findings(orch.snapshot().plan.findings)
    finally:
        orch.down()


def test_colo_apply_refuses_it_with_exit_2_unless_forced(
    newsroom_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch = running(newsroom_path.with_name("colo.sized.yaml"), state)
    try:
        monkeypatch.setattr("colo.api.client.orchestrator_client", lambda sd, **kw: api_client(orch))
        refused = runner.invoke(app, ["apply", str(newsroom_path), "--state-dir", str(state)])
        assert refused.exit_code == 2, refused.output
        assert "memory: memory: sentence-transformers/all-MiniLM-L6-v2 declares 0.5 GiB" in refused.output
        assert "--force" in refused.output and orch.snapshot().plan.findings == ()
        forced = runner.invoke(app, ["apply", str(newsroom_path), "--state-dir", str(state), "--force", "--json"])
        assert forced.exit_code == 0, forced.output
        assert memory_findings(orch.snapshot().plan.findings)
    finally:
        orch.down()


def test_a_reload_refuses_it_too(newsroom_path: Path, state: Path, tmp_path: Path) -> None:
    sized = tmp_path / "colo.yaml"
    sized.write_text(newsroom_path.with_name("colo.sized.yaml").read_text())
    orch = running(sized, state)
    try:
        sized.write_text(newsroom_path.read_text())  # SIGHUP re-reads the file: now the seed's numbers
        assert orch.reload() is None
        (event,) = [e for e in orch.events() if "reload" in e.message]
        assert "refused, nothing changed: the plan predicts out-of-memory" in event.message
        assert orch.snapshot().plan.findings == ()
    finally:
        orch.down()
