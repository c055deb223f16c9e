"""On a real GPU: what models really take, how good the estimator is, and agents planned from measurements run
under their new MPS limits.

The newsroom's models by family, not all eleven (``colo profile examples/newsroom/colo.yaml`` measures every
one; docs/memory.md's tables come from it): bert-tiny (a tiny BERT), all-MiniLM-L6-v2 (a sentence
transformer), roberta-base (a base-size encoder), distilgpt2 (a generator) and flan-t5-small (seq2seq), and the
agents made only of them (analyst, balancer, memory, newsreader, synthesizer).

1. Each model in a fresh child (``python -m colo.profiling.child``) at fp32, batch 32 × 512 tokens
   (generators and seq2seq: a 64-token prompt + 64 new tokens), NVML sampled for the child's pid at >= 50 Hz;
   three children at a time (each process's NVML figure and PyTorch peak are its own, so running them side by
   side keeps them exact). One line per model::

       GPU-RESULT model=... weights_mib=... reserved_peak_mib=... nvml_peak_mib=... estimate_mib=... err_pct=...

   The estimate uses the documented default overhead (680 MiB), never these measurements.
2. synthesizer's two models loaded together in one child, as the agent would: one CUDA context, less than apart.
3. Those agents planned from the measurements (per-agent requirement and limit).
4. Every one of them run at its worst case as an MPS client under its new limit, all at once as they would
   share the GPU: none may run out of memory; efficiency = NVML peak / limit.
5. A control, at the same time: the largest of them under 60 % of its requirement must fail — the limits are
   real.

Results (JSON, the model database, the seed-format ``model_config.json`` and Markdown tables) go to
``$COLO_GPU_OUT`` (default /tmp). The MPS daemon runs in a private pipe dir under /tmp and is always quit; every
child is killed at its timeout. No GPU setting is changed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mps_daemons import gpus_with_mps, running_daemon

from colo import units
from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults
from colo.gpu.mps.env import client_env
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuSnapshot, NvmlBackend
from colo.gpu.sampler import Sampler, nvml_read
from colo.memory.db import ModelDB
from colo.memory.estimate import estimate, estimate_set
from colo.memory.resolve import agent_memory_for_plan, memory_for_plan
from colo.memory.seed_export import model_config_document
from colo.memory.worst_case import WorstCase, agent_requests, config_requests
from colo.plan import inventory_slots, plan
from colo.plan.limits import agent_limit
from colo.plan.types import AgentPlan
from colo.profiling.profiler import Job, JobResult, Profiler
from colo.profiling.protocol import ProfileRequest
from colo.profiling.spawn import ChildOutcome, child_env, run_child
from colo.spec import load_config_text
from colo.spec.config import ColoConfig

pytestmark = [pytest.mark.gpu]
if importlib.util.find_spec("pytest_timeout") is not None:  # the profiling fixtures take a few minutes
    pytestmark.append(pytest.mark.timeout(900))

MIB = units.MIB
NEWSROOM = Path(__file__).resolve().parents[2] / "examples" / "newsroom" / "colo.yaml"
OUT = Path(os.environ.get("COLO_GPU_OUT", "/tmp"))
CHILD_TIMEOUT_SECS = 240.0
PROFILE_AT_ONCE = 3
AGENTS = ("analyst", "balancer", "memory", "newsreader", "synthesizer")
EXTRA_MODELS = ("roberta-base",)  # measured for the estimator; no agent of the subset uses it


def subset_config() -> ColoConfig:
    """The newsroom cut to :data:`AGENTS`, their models and :data:`EXTRA_MODELS`."""
    doc = yaml.safe_load(NEWSROOM.read_text())
    doc["agents"] = {k: v for k, v in doc["agents"].items() if k in AGENTS}
    used = {m for a in doc["agents"].values() for m in a["models"]} | set(EXTRA_MODELS)
    doc["models"] = {k: v for k, v in doc["models"].items() if k in used}
    return load_config_text(yaml.safe_dump(doc), str(NEWSROOM))


def mib(value: int | None) -> str:
    return "na" if value is None else f"{value / MIB:.0f}"


@dataclass
class Session:
    """What the module's fixtures measured, shared by the tests."""

    config: ColoConfig
    gpu: GpuSnapshot
    backend: NvmlBackend
    db: ModelDB
    models: dict[str, JobResult]
    agent_sets: dict[str, JobResult]


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    backend = NvmlBackend()
    gpus = backend.gpus()
    assert gpus, "no GPU visible to NVML"
    gpu = gpus[0]
    config = subset_config()
    OUT.mkdir(parents=True, exist_ok=True)
    db_path = OUT / "model_db.json"
    db_path.unlink(missing_ok=True)
    db = ModelDB.open(db_path)
    profiler = Profiler(
        db, backend, device="cuda", env={"CUDA_VISIBLE_DEVICES": gpu.uuid}, timeout_secs=CHILD_TIMEOUT_SECS
    )
    jobs = {mid: Job((req,)) for mid, req in config_requests(config, random_weights=None).items()}
    sets = {name: Job(agent_requests(config, name), agent=name) for name, a in config.agents.items() if len(a.models) > 1}
    with ThreadPoolExecutor(max_workers=PROFILE_AT_ONCE) as pool:
        futures = {key: pool.submit(profiler.run_job, job) for key, job in [*jobs.items(), *sets.items()]}
        done = {key: f.result() for key, f in futures.items()}
    models = {mid: done[mid] for mid in jobs}
    agent_sets = {name: done[name] for name in sets}
    for key, res in done.items():
        print(f"\nprofiled {key}: {res.error or 'ok'}", flush=True)
    db.save()
    yield Session(config, gpu, backend, db, models, agent_sets)


@pytest.fixture(scope="module")
def model_rows(session: Session) -> list[dict[str, Any]]:
    """One row per profiled model with the independent estimate; failed profiles have ``error``."""
    rows: list[dict[str, Any]] = []
    for mid, res in session.models.items():
        out = res.outcome
        entry = res.model_entry
        if not res.ok or out is None or entry is None or out.nvml_peak_bytes is None or out.sampler is None:
            tail = out.stderr_tail if out else ""
            rows.append({"model": mid, "error": f"{res.error} {tail}"})
            continue
        w = WorstCase(mid, entry.dtype, entry.batch_size, entry.seq_len, entry.new_tokens)
        est = estimate(w)  # default overhead: an independent estimate
        err = 100.0 * (est.nvml_peak_bytes - out.nvml_peak_bytes) / out.nvml_peak_bytes
        werr = 100.0 * (est.weights_bytes - out.result.weights_bytes) / out.result.weights_bytes
        row = {
            "model": mid,
            "error": "",
            "weights": out.result.runs[0].description,
            "weights_bytes": out.result.weights_bytes,
            "context_bytes": out.context_bytes,
            "allocated_peak_bytes": out.result.allocated_peak_bytes,
            "reserved_peak_bytes": out.result.reserved_peak_bytes,
            "nvml_peak_bytes": out.nvml_peak_bytes,
            "overhead_bytes": out.nvml_peak_bytes - out.result.reserved_peak_bytes,
            "sample_hz": round(out.sampler.rate_hz, 1),
            "samples": out.sampler.samples,
            "estimate_bytes": est.nvml_peak_bytes,
            "estimate_weights_bytes": est.weights_bytes,
            "estimate_activation_bytes": est.activation_bytes,
            "estimate_kv_bytes": est.kv_cache_bytes,
            "err_pct": round(err, 1),
            "weights_err_pct": round(werr, 2),
            "attention": est.attention,
        }
        rows.append(row)
        print(
            f"\nGPU-RESULT model={mid} weights_mib={mib(out.result.weights_bytes)} "
            f"context_mib={mib(out.context_bytes)} alloc_peak_mib={mib(out.result.allocated_peak_bytes)} "
            f"reserved_peak_mib={mib(out.result.reserved_peak_bytes)} nvml_peak_mib={mib(out.nvml_peak_bytes)} "
            f"overhead_mib={mib(row['overhead_bytes'])} estimate_mib={mib(est.nvml_peak_bytes)} "
            f"err_pct={err:.1f} weights_err_pct={werr:.2f} sample_hz={out.sampler.rate_hz:.0f} "
            f"attention={est.attention}",
            flush=True,
        )
    _write(OUT / "memory_gpu_models.json", rows)
    _write_models_table([r for r in rows if not r["error"]], session.gpu)
    return rows


def test_every_model_is_measured_with_nvml_at_50hz(session: Session, model_rows: list[dict[str, Any]]) -> None:
    failed = [f"{r['model']}: {r['error']}" for r in model_rows if r["error"]]
    assert not failed, "profiling failed: " + "; ".join(failed)
    for row in model_rows:
        assert row["sample_hz"] >= 50, f"{row['model']}: NVML sampled at only {row['sample_hz']} Hz"
        assert abs(row["weights_err_pct"]) <= 2.0, f"{row['model']}: weights off by {row['weights_err_pct']} %"
        assert row["nvml_peak_bytes"] >= row["reserved_peak_bytes"] >= row["allocated_peak_bytes"] > 0
        assert row["context_bytes"] is not None and row["context_bytes"] < row["nvml_peak_bytes"]
    assert len(model_rows) == len(session.config.models)


def test_estimator_error_within_20_pct(model_rows: list[dict[str, Any]]) -> None:
    rows = [r for r in model_rows if not r["error"]]
    assert rows
    print(f"\nGPU-RESULT estimator max_abs_err_pct={max(abs(r['err_pct']) for r in rows):.1f}", flush=True)
    bad = [f"{r['model']}: {r['err_pct']} %" for r in rows if abs(r["err_pct"]) > 20.0]
    assert not bad, "estimates off by more than 20 %: " + "; ".join(bad)


def test_agent_sets_measured_together(session: Session) -> None:
    for name, res in session.agent_sets.items():
        assert res.ok, f"agent {name}: {res.error}"
        entry = res.agent_entry
        assert entry is not None
        singles = [session.models[m].model_entry for m in session.config.agents[name].models]
        apart = sum(s.nvml_peak_bytes for s in singles if s is not None)
        reqs = agent_requests(session.config, name)
        est = estimate_set([WorstCase(r.model, r.dtype, r.batch_size, r.seq_len, r.new_tokens) for r in reqs])
        err = 100.0 * (est - entry.nvml_peak_bytes) / entry.nvml_peak_bytes
        print(
            f"\nGPU-RESULT agent_set={name} models={len(reqs)} nvml_peak_mib={mib(entry.nvml_peak_bytes)} "
            f"sum_of_single_peaks_mib={mib(apart)} estimate_mib={mib(est)} err_pct={err:.1f}",
            flush=True,
        )
        # one CUDA context for the whole set: less than the models in separate processes
        assert entry.nvml_peak_bytes < apart


def _plan_rows(session: Session) -> list[dict[str, Any]]:
    config, db = session.config, session.db
    requirement = agent_memory_for_plan(config, db, session.gpu.name)
    rows = []
    for name in config.agents:
        am = requirement[name]
        margin, limit = agent_limit(config, name, am.requirement_bytes)
        declared = sum(config.models[m].memory_bytes or 0 for m in config.agents[name].models)
        rows.append(
            {
                "agent": name,
                "models": list(config.agents[name].models),
                "priority": config.agents[name].priority,
                "requirement_bytes": am.requirement_bytes,
                "source": am.source,
                "detail": am.detail,
                "margin_bytes": margin,
                "limit_bytes": limit,
                "declared_bytes": declared,
            }
        )
    return rows


def test_newsroom_planned_from_measurements(session: Session) -> None:
    config, db = session.config, session.db
    rows = _plan_rows(session)
    declared_plan = plan(config, inventory_slots(config))
    per_model_plan = plan(config, inventory_slots(config), memory_for_plan(config, db, session.gpu.name))
    total = sum(r["limit_bytes"] for r in rows)
    total_req = sum(r["requirement_bytes"] for r in rows)
    for r in rows:
        assert r["source"] == "measured", r
        print(
            f"\nGPU-PLAN agent={r['agent']} models={len(r['models'])} requirement_mib={mib(r['requirement_bytes'])} "
            f"limit_mib={mib(r['limit_bytes'])} declared_mib={mib(r['declared_bytes'])} ({r['detail']})",
            flush=True,
        )
    print(
        f"\nGPU-PLAN total_limit_gib={total / units.GIB:.2f} total_requirement_gib={total_req / units.GIB:.2f} "
        f"declared_plan_total_gib={declared_plan.summary.allocated_bytes / units.GIB:.2f} "
        f"per_model_sum_plan_total_gib={per_model_plan.summary.allocated_bytes / units.GIB:.2f}",
        flush=True,
    )
    doc = model_config_document(config, db, session.gpu.name)
    _write(OUT / "model_config.json", doc)
    _write(
        OUT / "memory_gpu_plan.json",
        {
            "agents": rows,
            "total_limit_bytes": total,
            "declared_plan_total_bytes": declared_plan.summary.allocated_bytes,
        },
    )
    assert {s["source"] for s in doc["model_memory_specs"].values()} == {"measured"}
    # limits come from measurements plus each agent's margin, rounded up: never below the requirement
    assert all(r["limit_bytes"] >= r["requirement_bytes"] + r["margin_bytes"] - 1 for r in rows)


@pytest.fixture(scope="module")
def mps_daemon(session: Session) -> Iterator[tuple[MpsDaemon, Path]]:
    gpus_with_mps()
    base = Path(tempfile.mkdtemp(prefix="colo-mem-", dir="/tmp"))
    try:
        with running_daemon(MpsRoot(base), session.gpu.uuid, MpsDefaults(None, None, None)) as daemon:
            yield daemon, daemon.paths.pipe_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_under_limit(session: Session, daemon: MpsDaemon, name: str, limit_bytes: int) -> ChildOutcome:
    reqs: tuple[WorstCase, ...] = agent_requests(session.config, name)
    fake_plan = AgentPlan(
        name=name,
        models=(),
        priority="medium",
        requirement_bytes=limit_bytes,
        margin_bytes=0,
        limit_bytes=limit_bytes,
        client_priority=0,
        active_thread_pct=100,
        gpu=None,
    )
    env = child_env(client_env(fake_plan, daemon.paths, gpu_uuid=session.gpu.uuid))
    request = ProfileRequest(models=reqs, device="cuda", handshake=True)

    def sampler(pid: int) -> Sampler:
        return Sampler(nvml_read(session.backend, [pid]), interval_secs=0.02)

    return run_child(request, sampler_factory=sampler, env=env, timeout_secs=CHILD_TIMEOUT_SECS)


CONTROL = "control"


@pytest.fixture(scope="module")
def under_limits(session: Session, mps_daemon: tuple[MpsDaemon, Path]) -> tuple[dict[str, Any], dict[str, ChildOutcome]]:
    """Every agent at its worst case under its new limit, and the control (the largest agent under 60 % of its
    requirement), all at once as MPS clients of one daemon: (plan rows by agent + the control's, outcomes)."""
    daemon, _ = mps_daemon
    rows: dict[str, Any] = {r["agent"]: r for r in _plan_rows(session)}
    largest = max(rows, key=lambda n: rows[n]["requirement_bytes"])
    tight = units.round_up(int(rows[largest]["requirement_bytes"] * 0.6), MIB)
    runs = {name: (name, r["limit_bytes"]) for name, r in rows.items()}
    runs[CONTROL] = (largest, tight)
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {key: pool.submit(_run_under_limit, session, daemon, name, limit) for key, (name, limit) in runs.items()}
        outcomes = {key: f.result() for key, f in futures.items()}
    rows[CONTROL] = {**rows[largest], "agent": largest, "limit_bytes": tight}
    return rows, outcomes


def test_each_agent_runs_under_its_new_limit(under_limits: tuple[dict[str, Any], dict[str, ChildOutcome]]) -> None:
    rows, outcomes = under_limits
    results = []
    for name, out in outcomes.items():
        if name == CONTROL:
            continue
        limit = rows[name]["limit_bytes"]
        peak = out.nvml_peak_bytes
        eff = 100.0 * peak / limit if peak else 0.0
        results.append(
            {
                "agent": name,
                "limit_bytes": limit,
                "nvml_peak_bytes": peak,
                "ok": out.result.ok,
                "error": out.result.error,
                "efficiency_pct": round(eff, 1),
                "requirement_bytes": rows[name]["requirement_bytes"],
                "sample_hz": round(out.sampler.rate_hz, 1) if out.sampler else 0,
            }
        )
        print(
            f"\nGPU-AGENT agent={name} limit_mib={mib(limit)} nvml_peak_mib={mib(peak)} "
            f"requirement_mib={mib(rows[name]['requirement_bytes'])} efficiency_pct={eff:.1f} "
            f"ok={out.result.ok} {out.result.error}",
            flush=True,
        )
    total_limit = sum(r["limit_bytes"] for r in results)
    total_peak = sum(r["nvml_peak_bytes"] or 0 for r in results)
    print(
        f"\nGPU-AGENT total_limit_gib={total_limit / units.GIB:.2f} total_peak_gib={total_peak / units.GIB:.2f} "
        f"efficiency_pct={100.0 * total_peak / total_limit:.1f}",
        flush=True,
    )
    _write(OUT / "memory_gpu_agents.json", results)
    _write_agents_table(results)
    failed = [f"{r['agent']}: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "agents failed under their limits: " + "; ".join(failed)
    assert all(r["nvml_peak_bytes"] for r in results), "NVML did not see every MPS client"


def test_a_limit_below_the_requirement_fails(under_limits: tuple[dict[str, Any], dict[str, ChildOutcome]]) -> None:
    rows, outcomes = under_limits
    out, row = outcomes[CONTROL], rows[CONTROL]
    print(
        f"\nGPU-AGENT control agent={row['agent']} limit_mib={mib(row['limit_bytes'])} ok={out.result.ok} "
        f"error_kind={out.result.error_kind} nvml_peak_mib={mib(out.nvml_peak_bytes)}",
        flush=True,
    )
    assert not out.result.ok
    assert out.result.error_kind == "oom", out.result.error


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=lambda o: asdict(o)) + "\n")


def _write_models_table(rows: list[dict[str, Any]], gpu: GpuSnapshot) -> None:
    lines = [
        f"Measured on {gpu.name} (driver {gpu.driver_version}, CUDA {gpu.cuda_version}); fp32, batch 32 × 512 "
        "(generators: 64 + 64 new tokens); random weights unless said otherwise.",
        "",
        "| model | weights MiB | context MiB | allocated peak MiB | reserved peak MiB | NVML peak MiB | "
        "NVML − reserved MiB | estimate MiB | error % | samples/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {mib(r['weights_bytes'])} | {mib(r['context_bytes'])} | "
            f"{mib(r['allocated_peak_bytes'])} | {mib(r['reserved_peak_bytes'])} | {mib(r['nvml_peak_bytes'])} | "
            f"{mib(r['overhead_bytes'])} | {mib(r['estimate_bytes'])} | {r['err_pct']:+.1f} | {r['sample_hz']:.0f} |"
        )
    (OUT / "memory_gpu_models.md").write_text("\n".join(lines) + "\n")


def _write_agents_table(results: list[dict[str, Any]]) -> None:
    lines = [
        "| agent | requirement MiB | limit MiB | NVML peak under MPS MiB | efficiency % | ok |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['agent']} | {mib(r['requirement_bytes'])} | {mib(r['limit_bytes'])} | "
            f"{mib(r['nvml_peak_bytes'])} | {r['efficiency_pct']:.1f} | {r['ok']} |"
        )
    (OUT / "memory_gpu_agents.md").write_text("\n".join(lines) + "\n")
