"""THE agreement test: every caller gets its plan from the one pipeline (``colo.supervise.planning``).

``colo plan --json``, ``colo mps env AGENT``, ``colo serve``'s plan and the limits ``colo up`` (the Orchestrator
over fake NVML, fake MPS and a fake runner) launches each agent with must agree — for ``memory_source:
declared`` and ``db``, on one GPU and on several. The model database holds measurements from the fake GPU's
model AND newer ones from another GPU model, so a caller that asks the database without the GPU name (or
ignores ``memory_source: db``) plans different limits and fails this test.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from colo import units
from colo.api.readonly import load_read_only
from colo.cli import gpu_cmd
from colo.cli.main import app
from colo.clock import FakeClock
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.mps.fake import FakeMpsControl
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner
from colo.memory.db import ModelDB, ModelEntry
from colo.spec import load_config
from colo.supervise.orchestrator import Orchestrator
from testkit import measured_entry

GIB, MIB = units.GIB, units.MIB
HERE_GPU = "NVIDIA H100 80GB HBM3"  # the fake GPUs' name
OTHER_GPU = "NVIDIA A10"
MODELS = {"acme/enc-a": (1 * GIB, 1200 * MIB, 2600 * MIB), "acme/enc-b": (3 * GIB // 2, 900 * MIB, 2100 * MIB)}
#          model: (declared, measured on HERE_GPU, measured later on OTHER_GPU)

runner = CliRunner()


def config_text(source: str, gpus: int, gpu_gib: int, inventory: bool) -> str:
    gpu_rows = f"[{{name: {HERE_GPU}, memory: {gpu_gib}GiB, count: {gpus}}}]" if inventory else "auto"
    models = "\n".join(
        f"  {m}: {{memory: {d // MIB}MiB, task: encoder, batch_size: 32, max_seq_len: 512}}"
        for m, (d, _, _) in MODELS.items()
    )
    return f"""
version: 1
gpus: {gpu_rows}
policy: {{memory_source: {source}, mps: on}}
models:
{models}
agents:
  wire: {{models: [acme/enc-a], priority: high, command: [bin-wire]}}
  desk: {{models: [acme/enc-b], command: [bin-desk]}}
  archive: {{models: [acme/enc-a], priority: low, command: [bin-archive]}}
"""


def entry(model: str, nvml_bytes: int, gpu: str, date: str) -> ModelEntry:
    return measured_entry(
        model, nvml_bytes, gpu=gpu, date=date, weights_bytes=90 * MIB, reserved_peak_bytes=nvml_bytes - 500 * MIB
    )


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cpa", dir="/tmp"))  # short: MPS pipe paths are Unix sockets
    monkeypatch.setenv("COLO_STATE_DIR", str(d))
    db = ModelDB(d / "model_db.json")
    for model, (_, here, other) in MODELS.items():
        db.put(entry(model, here, HERE_GPU, "2026-11-01T10:00:00+00:00"))
        db.put(entry(model, other, OTHER_GPU, "2026-11-20T10:00:00+00:00"))  # newer, another GPU model
    db.save()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def from_plan_json(path: Path) -> dict[str, tuple[str, int | None]]:
    result = runner.invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["mps_resource_allocation"]["agent_allocations"]
    return {a: (v["colo"]["mps_pinned_device_mem_limit"], v["colo"]["gpu"]["index"]) for a, v in doc.items()}


def from_mps_env(path: Path, agents: list[str], backend: FakeGpuBackend) -> dict[str, tuple[str, int | None]]:
    by_uuid = {g.uuid: g.index for g in backend.gpus()}
    out = {}
    for a in agents:
        result = runner.invoke(app, ["mps", "env", a, "--config", str(path)])
        assert result.exit_code == 0, result.output
        env = dict(ln[len("export "):].split("=", 1) for ln in result.stdout.splitlines() if ln.startswith("export "))
        out[a] = (env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].split("=", 1)[1], by_uuid[env["CUDA_VISIBLE_DEVICES"]])
    return out


def from_up(path: Path, state: Path, backend: FakeGpuBackend) -> tuple[dict[str, tuple[str, int | None]], dict[str, int]]:
    clock = FakeClock()
    fake_runner = FakeRunner()
    orch = Orchestrator(
        load_config(path),
        state_dir=state,
        gpu_backend=backend,
        mps_control=FakeMpsControl(),
        runner=fake_runner,
        probe=lambda c: HealthResult(True, "ok"),
        clock=clock,
    )
    orch.up()
    try:
        by_uuid = {g.uuid: g.index for g in backend.gpus()}
        limits: dict[str, tuple[str, int | None]] = {}
        limit_bytes: dict[str, int] = {}
        for proc in fake_runner.spawned:
            env: dict[str, Any] = dict(proc.spec.env)
            name = env["COLO_AGENT"]
            limits[name] = (env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].split("=", 1)[1], by_uuid[env["CUDA_VISIBLE_DEVICES"]])
            limit_bytes[name] = proc.spec.limit_bytes
        return limits, limit_bytes
    finally:
        orch.down()


@pytest.mark.parametrize("source", ["declared", "db"])
@pytest.mark.parametrize(("gpus", "inventory"), [(1, False), (2, False), (2, True)], ids=["1gpu", "2gpus", "inventory"])
def test_plan_mps_env_serve_and_up_agree(
    source: str, gpus: int, inventory: bool, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_gib = 8 if gpus == 1 else 4  # several: the three agents do not fit on one 4 GiB GPU
    backend = FakeGpuBackend([fake_gpu(i, memory_total_bytes=gpu_gib * GIB) for i in range(gpus)])
    monkeypatch.setattr("colo.gpu.nvml.NvmlBackend", lambda *a, **k: backend)  # what every CLI caller opens
    monkeypatch.setattr(gpu_cmd, "_backend", lambda: backend)
    path = state / "colo.yaml"
    path.write_text(config_text(source, gpus, gpu_gib, inventory))

    planned = from_plan_json(path)
    agents = sorted(planned)
    launched, launched_bytes = from_up(path, state, backend)
    assert launched == planned
    assert from_mps_env(path, agents, backend) == planned
    served = load_read_only(path, backend=backend).snapshot().plan
    assert served is not None
    assert {a.name: (units.mps_limit(a.limit_bytes), a.gpu.index if a.gpu else None) for a in served.placed} == planned
    assert launched_bytes == {a.name: a.limit_bytes for a in served.placed}

    # and the plan is the right one: the declared numbers, or the measurements from THIS GPU's model
    pick = 0 if source == "declared" else 1
    for a in served.placed:
        assert a.requirement_bytes == MODELS[a.models[0].model][pick], a
    if gpus > 1:
        assert len({gpu for _, gpu in planned.values()}) > 1  # the agents really are on several GPUs


def test_only_the_planning_pipeline_calls_the_planner() -> None:
    """Every command gets its plan from supervise/planning.py: no other module imports the planner's ``plan``
    or ``inventory_slots`` (the API's fake builds a plan for tests, beside the real source)."""
    import ast

    src = Path(__file__).resolve().parents[3] / "src" / "colo"
    allowed = {"supervise/planning.py", "api/fake_source.py"}
    offenders = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("plan/") or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in ("colo.plan", "colo.plan.planner", "colo.plan.inventory"):
                names = {a.name for a in node.names} & {"plan", "inventory_slots", "plan_gpus"}
                if names:
                    offenders.append(f"{rel}: {sorted(names)}")
    assert not offenders, f"plans assembled outside supervise/planning.py: {offenders}"


def test_auto_plan_mps_env_and_up_agree_on_which_agents_are_mps_clients(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """policy.mps: auto on two GPUs: desk alone on gpu1 runs without MPS in the plan, in `colo mps env` and
    in `colo up`; wire and archive share gpu0 under MPS."""
    backend = FakeGpuBackend([fake_gpu(i, memory_total_bytes=4 * GIB) for i in range(2)])
    monkeypatch.setattr("colo.gpu.nvml.NvmlBackend", lambda *a, **k: backend)
    text = config_text("declared", 2, 4, inventory=False).replace(", mps: on}", "}")
    text = text.replace("command: [bin-wire]", "command: [bin-wire], gpu: 0").replace(
        "command: [bin-archive]", "command: [bin-archive], gpu: 0").replace("command: [bin-desk]", "command: [bin-desk], gpu: 1")
    path = state / "colo.yaml"
    path.write_text(text)
    r = runner.invoke(app, ["plan", str(path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    planned = {a: v["colo"]["mps"] for a, v in doc["mps_resource_allocation"]["agent_allocations"].items()}
    assert planned == {"wire": True, "archive": True, "desk": False}
    for a, mps in planned.items():
        out = runner.invoke(app, ["mps", "env", a, "--config", str(path)])
        assert out.exit_code == 0, out.output
        assert ("CUDA_MPS_PIPE_DIRECTORY" in out.stdout) == mps, out.stdout
    assert "no MPS on gpu1 (1 agent — MPS off (auto)" in runner.invoke(app, ["mps", "env", "desk", "--config", str(path)]).stdout
    fake_runner = FakeRunner()
    clock = FakeClock()
    orch = Orchestrator(load_config(path), state_dir=state, gpu_backend=backend, mps_control=FakeMpsControl(),
                        runner=fake_runner, probe=lambda c: HealthResult(True, "ok"), clock=clock)
    orch.up()
    try:
        up = {dict(p.spec.env)["COLO_AGENT"]: "CUDA_MPS_PIPE_DIRECTORY" in dict(p.spec.env) for p in fake_runner.spawned}
        assert up == planned
    finally:
        orch.down()
