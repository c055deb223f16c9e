"""The one NVML sampling loop (colo.gpu.sampler) on a fake clock and a fake backend."""

from __future__ import annotations

from colo.clock import FakeClock
from colo.errors import GpuError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.nvml import ClientProcess
from colo.gpu.sampler import Sample, Sampler, nvml_read


def test_stop_takes_a_last_reading_and_errors_are_counted_not_raised() -> None:
    clock = FakeClock(0.0)
    calls: list[float] = []

    def read(t_secs: float) -> Sample | None:
        calls.append(t_secs)
        if len(calls) == 2:
            raise GpuError("NVML hiccup")
        return Sample(t_secs, {7: 100 * len(calls)}, {7: "GPU-1"})

    s = Sampler(read, clock=clock)
    s.sample_once()
    clock.advance(1.0)
    assert s.sample_once() is None  # the hiccup
    clock.advance(1.0)
    seen = s.stop()  # one last reading
    assert [x.t_secs for x in seen.samples] == [0.0, 2.0]
    assert seen.errors == 1 and seen.last_error == "NVML hiccup" and seen.duration_secs == 2.0
    peak = seen.peak(7)
    assert peak.peak_bytes == 300 and peak.gpu_uuid == "GPU-1" and peak.samples == 2 and peak.rate_hz == 1.0
    assert seen.peak(8).peak_bytes is None


def test_device_reading_and_the_bench_json_round_trip() -> None:
    gpu = fake_gpu(0)
    procs = [ClientProcess(3, 0, gpu.uuid, 5, True), ClientProcess(3, 1, "GPU-other", 9, False)]
    backend = FakeGpuBackend([gpu], procs)
    everywhere = nvml_read(backend, [3])(0.0)
    on_gpu0 = nvml_read(backend, [3], 0)(0.0)
    assert everywhere is not None and everywhere.memory_of(3) == 14 and everywhere.sm_util_pct is None
    assert on_gpu0 is not None and on_gpu0.memory_of(3) == 5 and on_gpu0.memory_used_bytes == gpu.memory_used_bytes
    raw = on_gpu0.to_dict()
    assert Sample.from_dict({**raw, "process_sm_pct": {"3": 50.0}}).process_memory_bytes == {3: 5}  # old files load
