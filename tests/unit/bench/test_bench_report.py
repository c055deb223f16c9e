"""Report writers: the seed's table, JSON round trip, the PNG, and the GPU sampler that feeds them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from colo.bench.activity import ActivityWatch, GpuActivity
from colo.bench.report import load_json, plot_png, to_json, to_markdown, write_reports
from colo.bench.results import BenchResult
from colo.clock import FakeClock
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.nvml import ClientProcess
from colo.gpu.sampler import nvml_read

MakeResult = Callable[..., BenchResult]

RATES = {
    ("timeslice", 1): 100.0,
    ("timeslice", 2): 150.0,
    ("timeslice", 4): 160.0,
    ("mps", 1): 95.0,
    ("mps", 2): 180.0,
    ("mps", 4): 320.0,
    ("merged", 2): 200.0,
    ("merged", 4): 400.0,
}


def test_numbers_derived_from_points(make_result: MakeResult) -> None:
    r = make_result(RATES)
    assert r.modes() == ["timeslice", "mps"]
    assert r.efficiency("timeslice", 2) == pytest.approx(0.75)
    assert r.efficiency("mps", 4) == pytest.approx(320 / (4 * 95))
    assert r.mps_ratio(4) == pytest.approx(2.0)
    assert r.bound(1) == pytest.approx(100.0) and r.bound(4) == pytest.approx(400.0)
    assert r.bound_fraction("mps", 4) == pytest.approx(0.8)
    assert r.point("mps", 2).latency.p50_secs == pytest.approx(0.015)  # type: ignore[union-attr]


def test_markdown_has_the_seed_table_and_the_reasons(make_result: MakeResult) -> None:
    md = to_markdown([make_result(RATES, sm_pct=35.0)])
    assert "| mode | N | individual (seq/s) | aggregate (seq/s) | scaling efficiency |" in md
    assert "| MPS | 4 | 80.0 | 320.0 | 84 % | 2.00× | 400.0 | 80 % | 15.0 | 20.0 | 35 % |" in md
    assert "| time-slicing | 2 | 75.0 | 150.0 | 75 % | – | 200.0 | 75 % |" in md
    assert "NVIDIA H100 80GB HBM3 (80.0 GiB), driver 580.159.04, CUDA 13.0, torch 2.11.0" in md
    assert "N=4: MPS 2.00× time-slicing (faster than)" in md
    assert "busy 35 % of the time: room for other processes' kernels" in md
    assert "device-level utilisation only" in md


def test_json_round_trip_without_latency_lists(make_result: MakeResult) -> None:
    r = make_result(RATES)
    text = to_json([r])
    raw = json.loads(text)
    summary = {(row["mode"], row["concurrency"]): row for row in raw["runs"][0]["summary"]}
    assert summary[("mps", 4)]["mps_over_timeslice"] == pytest.approx(2.0)
    assert summary[("timeslice", 1)]["scaling_efficiency"] == pytest.approx(1.0)
    assert raw["runs"][0]["machine"]["driver"] == "580.159.04"
    back = load_json(text)[0]
    assert back.mps_ratio(4) == pytest.approx(2.0)
    assert back.point("mps", 4).latency.p99_secs == pytest.approx(r.point("mps", 4).latency.p99_secs)  # type: ignore[union-attr]
    assert back.point("mps", 4).gpu.sm_util_mean_pct == pytest.approx(50.0)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        load_json("[1, 2]")


def test_png_and_files(make_result: MakeResult, tmp_path: Path) -> None:
    png = plot_png([make_result(RATES), make_result(RATES, title="second")])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    paths = write_reports([make_result(RATES)], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert load_json(paths["json"].read_text())[0].title == "encoder tiny"


def test_sampler_keeps_only_the_benchmarks_processes() -> None:
    gpu = fake_gpu(0)
    gpu = type(gpu)(**{**gpu.__dict__, "sm_util_pct": 70, "mem_util_pct": 20, "memory_used_bytes": 5 << 30})
    procs = [
        ClientProcess(pid=11, gpu_index=0, gpu_uuid=gpu.uuid, used_memory_bytes=1 << 30, is_mps_client=True),
        ClientProcess(pid=99, gpu_index=0, gpu_uuid=gpu.uuid, used_memory_bytes=3 << 30, is_mps_client=False),
        ClientProcess(pid=12, gpu_index=0, gpu_uuid=gpu.uuid, used_memory_bytes=None, is_mps_client=True),
    ]
    backend = FakeGpuBackend([gpu], procs)
    sample = nvml_read(backend, [11, 12], 0)(0.5)
    assert sample is not None and sample.sm_util_pct == 70 and sample.process_memory_bytes == {11: 1 << 30}
    assert nvml_read(backend, [11], 3)(0.0) is None
    clock = FakeClock(10.0)
    sampler = ActivityWatch(backend, 0, interval_secs=3600, clock=clock).sampler([11])  # the test drives it
    sampler.sample_once()
    clock.advance(0.2)
    sampler.sample_once()
    activity = GpuActivity(0, "", sampler.samples().samples)
    assert [round(s.t_secs, 3) for s in activity.samples] == [0.0, 0.2]
    assert activity.sm_util_mean_pct == 70 and activity.process_memory_max_bytes() == {11: 1 << 30}


def test_sampler_thread_samples_until_stopped_and_survives_errors() -> None:
    from colo.errors import GpuError

    backend = FakeGpuBackend([fake_gpu(0)])
    sampler = ActivityWatch(backend, 0, interval_secs=0.01)
    sampler.start([1])
    deadline = 200
    while sampler._sampler is not None and not sampler._sampler.samples().samples and deadline:
        deadline -= 1
        time.sleep(0.01)
    backend.error = GpuError("driver went away")
    activity = sampler.stop()
    assert activity.samples and activity.gpu_name == "NVIDIA H100 80GB HBM3"


def test_decode_runs_state_the_bandwidth_bound() -> None:
    from colo.bench.report import bandwidth_line
    from colo.bench.results import InstanceResult, PointResult

    def inst(tokens_per_sec: float, bandwidth: float) -> InstanceResult:
        info = {
            "copy_bandwidth_bytes_per_sec": bandwidth,
            "bytes_read_per_step": 15e9,
            "batch_size": 1,
            "cuda_graphs": True,
        }
        return InstanceResult(0, "", 1, "tok", tokens_per_sec * 2, 2.0, (0.3,), info)

    # the lone instance measured 3 TB/s; two that started together measured less: the bound uses 3 TB/s
    r = BenchResult(
        "decode",
        "decode(shape=llama-3.1-8b)",
        (
            PointResult("timeslice", 1, (inst(150.0, 1.5e12),)),
            PointResult("merged", 2, (inst(290.0, 3.0e12),)),
        ),
    )
    line = bandwidth_line(r)
    assert line is not None
    assert "150.0 tok/s = 75 % of the memory-bandwidth bound (200 tok/s = copy bandwidth 3.00 TB/s" in line
    assert bandwidth_line(BenchResult("e", "encoder", (PointResult("timeslice", 1, (inst(1.0, 0.0),)),))) is None
