"""A whole ``colo bench`` run: every mode × concurrency, the merged-batch bound, machine facts.

:func:`run_bench` runs, for each mode (``timeslice``, ``mps``) and each N, N copies of the base instance
together (:func:`colo.bench.harness.run_point`), then — when the workload has a batch — one process with the
merged batch (N × batch) in time-slicing mode (a single process: no co-location to choose) as the upper
bound. N = 1 is always measured, since scaling efficiency is relative to it. The instances of one mode are
started once (as many as the largest N) and reused for every N: the ones outside a window sit idle, loaded. A run with a fixed set of
different instances (e.g. the newsroom's nine agents) is one point per mode.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from colo.bench.activity import ActivityWatch
from colo.bench.harness import InstanceGroup, Progress, run_point
from colo.bench.modes import DEFAULT_MODES, Mode, check_modes
from colo.bench.mps import MpsClientLimits, colocation_env
from colo.bench.results import BenchResult, PointResult
from colo.bench.spec import InstanceSpec
from colo.errors import UsageError

if TYPE_CHECKING:
    from colo.gpu.nvml import GpuBackend

# The parameter that is multiplied for the merged-batch bound, per workload kind.
MERGE_PARAM = {"encoder": "batch_size", "decode": "batch_size", "hf_decode": "batch_size", "cpu": "items_per_request"}


@dataclass(frozen=True)
class BenchPlan:
    """What to run. Either ``base`` (N copies at each concurrency) or ``fixed`` (one set, run together)."""

    title: str
    base: InstanceSpec | None = None
    fixed: tuple[InstanceSpec, ...] = ()
    modes: tuple[Mode, ...] = DEFAULT_MODES
    concurrencies: tuple[int, ...] = (1, 2, 4, 8)
    merged_bound: bool = True
    limits: tuple[MpsClientLimits, ...] = (MpsClientLimits(),)  # instance i gets limits[i % len(limits)]
    gpu_index: int = 0
    sample_interval_secs: float = 0.2
    ready_timeout_secs: float = 900.0

    def __post_init__(self) -> None:
        if not self.limits:
            raise UsageError("limits must list at least one MpsClientLimits")
        if (self.base is None) == (not self.fixed):
            raise UsageError("a bench plan needs either one base instance or a fixed set of instances")
        object.__setattr__(self, "modes", tuple(check_modes(self.modes)))  # "mps" from a caller: Mode.MPS
        if any(n < 1 for n in self.concurrencies):
            raise UsageError(f"concurrency values must be 1 or more, got {list(self.concurrencies)}")

    def levels(self) -> list[int]:
        """Concurrency levels to measure: the requested ones plus 1, ascending."""
        return sorted({1, *self.concurrencies})

    def instances(self, n: int) -> list[InstanceSpec]:
        """The specs for N copies of the base instance, labelled ``i0``…"""
        assert self.base is not None
        return [replace(self.base, label=self.base.label or f"i{i}") for i in range(n)]

    def merged(self, n: int) -> InstanceSpec | None:
        """One instance doing the work of N (the merged batch), or None when the workload has no batch."""
        if self.base is None or self.base.kind not in MERGE_PARAM:
            return None
        key = MERGE_PARAM[self.base.kind]
        default = 1.0 if key == "items_per_request" else 8
        value = self.base.params.get(key, default)
        return self.base.with_params(**{key: value * n})

    def steps(self) -> list[tuple[Mode, int]]:
        """(mode, N) in run order; mode ``merged`` for the bound."""
        if self.fixed:
            return [(m, len(self.fixed)) for m in self.modes]
        out = [(m, n) for m in self.modes for n in self.levels()]
        if self.merged_bound and self.merged(2) is not None:
            out += [(Mode.MERGED, n) for n in self.levels() if n > 1]
        return out


def specs_for_mode(plan: BenchPlan, mode: Mode) -> list[InstanceSpec]:
    """The instances one mode starts: the fixed set, or as many copies as the largest N; under MPS each
    carries its limits (instance i: ``plan.limits[i % len(plan.limits)]``) in its environment."""
    specs = list(plan.fixed) if plan.fixed else plan.instances(max(plan.levels()))
    if mode != Mode.MPS:
        return specs
    return [replace(s, env={**plan.limits[i % len(plan.limits)].env(), **s.env}) for i, s in enumerate(specs)]


def gpu_backend(required: bool) -> GpuBackend | None:
    """NVML when it answers; else None, or (``required``: a run with MPS points) its GpuError raised."""
    from colo.errors import GpuError
    from colo.gpu.nvml import NvmlBackend

    try:
        backend = NvmlBackend()
        backend.gpus()
        return backend
    except GpuError:
        if required:
            raise
        return None


def machine_facts(backend: GpuBackend | None, gpu_index: int) -> dict[str, Any]:
    """GPU, driver, CUDA driver version, host; the torch facts come from the instances."""
    facts: dict[str, Any] = {"host": platform.node(), "python": platform.python_version()}
    if backend is None:
        facts["gpu"] = None
        return facts
    gpu = next((g for g in backend.gpus() if g.index == gpu_index), None)
    facts.update(
        {
            "gpu": gpu.name if gpu else None,
            "gpu_uuid": gpu.uuid if gpu else None,
            "gpu_memory_bytes": gpu.memory_total_bytes if gpu else None,
            "driver": backend.driver_version(),
            "cuda_driver": backend.cuda_version(),
        }
    )
    return facts


def run_bench(
    plan: BenchPlan,
    *,
    backend: GpuBackend | None = None,
    progress: Progress | None = None,
    on_point: Callable[[PointResult], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> BenchResult:
    """Run every step of ``plan``; returns all points. ``backend`` (NVML) gives the GPU's UUID for pinning
    and MPS, the machine facts and activity samples; without one, only ``timeslice`` runs (CPU workloads,
    HTTP targets). Raises BenchError / MpsError / UsageError."""
    uuid = None
    if backend is not None:
        gpu = next((g for g in backend.gpus() if g.index == plan.gpu_index), None)
        if gpu is None:
            raise UsageError(f"no GPU with index {plan.gpu_index}", hint="see `nvidia-smi -L`")
        uuid = gpu.uuid
    elif Mode.MPS in plan.modes:
        raise UsageError("--mode mps needs an NVIDIA GPU (NVML found none)", hint="use --mode timeslice")
    points: list[PointResult] = []

    def sampler() -> ActivityWatch | None:
        return ActivityWatch(backend, plan.gpu_index, interval_secs=plan.sample_interval_secs) if backend else None

    def record(point: PointResult) -> None:
        points.append(point)
        if on_point is not None:
            on_point(point)

    for mode in plan.modes:
        specs = specs_for_mode(plan, mode)
        levels = [len(specs)] if plan.fixed else plan.levels()
        with (
            colocation_env(mode, uuid) as extra_env,
            InstanceGroup(
                specs,
                env={**os.environ, **extra_env},
                ready_timeout_secs=plan.ready_timeout_secs,
                progress=progress,
                name=f"{mode}: {len(specs)} instance(s)",
            ) as group,
        ):
            for n in levels:
                results, activity = group.run(n, sampler=sampler(), label=f"{mode} N={n}")
                record(PointResult(mode, n, tuple(results), activity, specs[0].describe()))
    for mode, n in plan.steps():
        if mode != Mode.MERGED:
            continue
        merged = plan.merged(n)
        assert merged is not None
        with colocation_env(Mode.TIMESLICE, uuid) as extra_env:
            point = run_point(
                [replace(merged, label=f"merged x{n}")],
                mode=Mode.MERGED,
                env={**os.environ, **extra_env},
                sampler=sampler(),
                ready_timeout_secs=plan.ready_timeout_secs,
                progress=progress,
                name=f"merged batch x{n}",
            )
        record(replace(point, concurrency=n))
    machine = machine_facts(backend, plan.gpu_index)
    first = points[0].instances[0].info if points and points[0].instances else {}
    for key in ("torch", "torch_cuda", "device", "sm_count"):
        if key in first:
            machine[key] = first[key]
    workload = plan.base.describe() if plan.base else ", ".join(s.label or s.describe() for s in plan.fixed)
    return BenchResult(
        title=plan.title,
        workload=workload,
        points=tuple(points),
        machine=machine,
        settings={
            "modes": list(plan.modes),
            "concurrency": plan.levels() if not plan.fixed else [len(plan.fixed)],
            "duration_secs": (plan.base or plan.fixed[0]).duration_secs,
            "instance": (plan.base.to_json() if plan.base else [s.to_json() for s in plan.fixed]),
            "mps_limits": [lim.env() for lim in plan.limits],
            **(settings or {}),
        },
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
