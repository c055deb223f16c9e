"""Synthetic benchmark results for the report, advise and CLI tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from colo.bench.activity import GpuActivity
from colo.bench.results import BenchResult, InstanceResult, PointResult
from colo.gpu.sampler import Sample

MakeResult = Callable[..., BenchResult]


def point(mode: str, n: int, per_instance: float, *, sm_pct: float = 50.0, unit: str = "seq") -> PointResult:
    """N instances each doing ``per_instance`` items/s over 2 s, latencies 10 ms and 20 ms."""
    instances = tuple(
        InstanceResult(
            index=i,
            label=f"i{i}",
            pid=1000 + i,
            unit=unit,
            items=per_instance * 2.0,
            elapsed_secs=2.0,
            latencies_secs=(0.010, 0.020),
            info={"cuda_graphs": True},
        )
        for i in range(n)
    )
    samples = tuple(
        Sample(
            t_secs=0.2 * k,
            sm_util_pct=sm_pct,
            mem_util_pct=10.0,
            memory_used_bytes=4 << 30,
            process_memory_bytes={1000 + i: 1 << 30 for i in range(n)},
        )
        for k in range(3)
    )
    return PointResult(mode, n, instances, GpuActivity(0, "NVIDIA H100 80GB HBM3", samples), "encoder(x)")


@pytest.fixture()
def make_result() -> MakeResult:
    def make(
        rates: Mapping[tuple[str, int], float], *, title: str = "encoder tiny", sm_pct: float = 50.0, unit: str = "seq"
    ) -> BenchResult:
        """``rates[(mode, N)]`` = aggregate items/s of that point."""
        pts = tuple(point(m, n, agg / n, sm_pct=sm_pct, unit=unit) for (m, n), agg in rates.items())
        return BenchResult(
            title=title,
            workload="encoder(model=x)",
            points=pts,
            machine={
                "gpu": "NVIDIA H100 80GB HBM3",
                "gpu_memory_bytes": 80 << 30,
                "driver": "580.159.04",
                "cuda_driver": "13.0",
                "torch": "2.11.0",
                "torch_cuda": "13.0",
            },
            settings={"duration_secs": 2.0},
            created="2026-11-21T18:00:00Z",
        )

    return make
