"""The profiling child's protocol and the parent that runs it: a real child on CPU, NVML faked."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from colo import units
from colo.clock import FakeClock, SystemClock
from colo.errors import GpuError, ProfileError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.nvml import ClientProcess
from colo.gpu.sampler import Sample, Sampler, nvml_read
from colo.memory.db import ModelDB
from colo.memory.worst_case import WorstCase
from colo.profiling.profiler import Job, Profiler, jobs_for
from colo.profiling.protocol import ChildResult, ModelRun, ProfileRequest, decode_event, encode_event
from colo.profiling.spawn import child_env, run_child

MIB = units.MIB
TINY = "google/bert_uncased_L-2_H-128_A-2"


def test_request_roundtrip_and_validation() -> None:
    req = ProfileRequest(models=(WorstCase(TINY, batch_size=2, seq_len=8),), device="cpu", repeats=2)
    assert ProfileRequest.from_json(req.to_json()) == req
    for bad in (
        "",
        "{}",
        '{"version": 1, "models": []}',
        '{"version": 9, "models": [{"model": "x"}]}',
        '{"version": 1, "models": [{"modle": "x"}]}',
    ):
        with pytest.raises(ProfileError):
            ProfileRequest.from_json(bad)


def test_result_event_roundtrip() -> None:
    res = ChildResult(
        ok=True,
        pid=7,
        device="cuda",
        weights_bytes=5,
        runs=(ModelRun("m", "random", "random weights", 5, 9, 10, 64, 0.1),),
    )
    event = decode_event(json.dumps(res.to_event()))
    assert event is not None and ChildResult.from_event(event) == res
    assert decode_event(encode_event("context", pid=3)) == {"event": "context", "pid": 3}
    assert decode_event("some library chatter") is None
    assert decode_event("{broken") is None
    assert decode_event('{"no_event": 1}') is None
    with pytest.raises(ProfileError):
        ChildResult.from_event({"event": "result", "nonsense": 1})


def _pid42(readings: list[tuple[int | None, str]]) -> Callable[[float], Sample]:
    """A reading of pid 42 as nvml_read gives it: (bytes used or None, GPU UUID or "") per call."""
    it = iter(readings)

    def read(t_secs: float) -> Sample:
        used, uuid = next(it)
        return Sample(t_secs, {42: used} if used is not None else {}, {42: uuid} if uuid else {})

    return read


def _memory(sample: Sample | None) -> int | None:
    return sample.memory_of(42) if sample else None


def test_sampler_keeps_the_peak_and_counts_the_rate() -> None:
    clock = FakeClock(100.0)
    s = Sampler(_pid42([(None, ""), (100, "GPU-1"), (300, "GPU-1"), (200, "GPU-1")]), clock=clock)
    assert _memory(s.sample_once()) is None
    assert [_memory(s.sample_once()) for _ in range(3)] == [100, 300, 200]
    clock.advance(0.04)
    stats = s.samples().peak(42)
    assert stats.peak_bytes == 300 and stats.samples == 4 and stats.gpu_uuid == "GPU-1"
    assert stats.rate_hz == pytest.approx(100.0)


def test_sampler_survives_nvml_errors() -> None:
    def boom(t_secs: float) -> Sample:
        raise GpuError("NVML hiccup")

    s = Sampler(boom, clock=FakeClock())
    assert s.sample_once() is None
    assert s.samples().errors == 1 and s.samples().peak(1).peak_bytes is None


def test_nvml_reader_sums_the_pids_rows() -> None:
    gpu = fake_gpu()
    rows = [
        ClientProcess(5, 0, gpu.uuid, 100, True),
        ClientProcess(5, 1, "GPU-other", 50, False),
        ClientProcess(6, 0, gpu.uuid, 999, True),
        ClientProcess(5, 0, gpu.uuid, None, True),
    ]
    backend = FakeGpuBackend([gpu], rows)

    def read(pid: int) -> tuple[int | None, str]:
        sample = nvml_read(backend, [pid])(0.0)
        assert sample is not None
        return sample.memory_of(pid), sample.process_gpu_uuid.get(pid, "")

    assert read(5) == (150, gpu.uuid)
    assert read(7) == (None, "")


def test_child_env_passes_colo_on_pythonpath() -> None:
    env = child_env({"X": "1"}, base={"PYTHONPATH": "/elsewhere"})
    src = str(Path(__file__).resolve().parents[3] / "src")
    assert env["PYTHONPATH"].split(":")[0] == src and "/elsewhere" in env["PYTHONPATH"]
    assert env["X"] == "1" and env["HF_HUB_OFFLINE"] == "1"


class ChildrenBackend(FakeGpuBackend):
    """Fake NVML that reports this process's children as GPU clients whose memory grows on every query."""

    def __init__(self) -> None:
        super().__init__([fake_gpu(name="NVIDIA H100 80GB HBM3")])
        self.used = 500 * MIB

    def processes(self) -> list[ClientProcess]:
        self._check()
        self.used += MIB
        uuid = self._gpus[0].uuid
        return [ClientProcess(c.pid, 0, uuid, self.used, True) for c in psutil.Process().children()]


class DatedClock(SystemClock):
    """Real waits and durations; the wall clock stopped at 2026-11-21T18:00:00Z (the entry's date)."""

    def wall(self) -> float:
        return 1_795_284_000.0


def test_profiler_runs_a_real_child_and_records_it(tmp_path: Path) -> None:
    db = ModelDB(tmp_path / "db.json")
    backend = ChildrenBackend()
    profiler = Profiler(db, backend, device="cpu", timeout_secs=240, interval_secs=0.005, clock=DatedClock())
    req = WorstCase(TINY, batch_size=2, seq_len=16)
    result = profiler.run_job(Job((req,)))
    assert result.ok, result.error
    out = result.outcome
    assert out is not None and out.returncode == 0
    run = out.result.runs[0]
    assert run.tokens == 32 and run.weights == "random" and "random weights" in run.description
    assert out.result.weights_bytes == pytest.approx(4.39e6 * 4, rel=0.01)
    # baselines are the samples taken at the two handshakes; the peak is the last, largest sample
    assert out.context_bytes is not None and out.loaded_bytes is not None
    assert out.context_bytes < out.loaded_bytes <= (out.nvml_peak_bytes or 0)
    assert out.sampler is not None and out.sampler.samples >= 3
    entry = result.model_entry
    assert entry is not None and db.models() == [entry]
    assert entry.nvml_peak_bytes == out.nvml_peak_bytes
    assert entry.provenance.gpu == "NVIDIA H100 80GB HBM3" and entry.provenance.driver == "580.00.00"
    assert entry.provenance.torch and entry.provenance.date == "2026-11-21T18:00:00+00:00"
    assert entry.overhead_bytes == entry.nvml_peak_bytes - (entry.reserved_peak_bytes or 0)


def test_a_bad_request_is_a_failed_result_not_an_exception() -> None:
    bad = ProfileRequest(models=(WorstCase(TINY),), device="cpu", handshake=False, version=99)
    out = run_child(bad, timeout_secs=60)
    assert not out.result.ok and out.result.error_kind == "config" and out.returncode == 2
    assert "protocol version" in out.result.error


def test_a_child_past_its_timeout_is_killed(tmp_path: Path) -> None:
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(60)\n")
    req = ProfileRequest(models=(WorstCase(TINY),), device="cpu", handshake=False)
    with pytest.raises(ProfileError, match="ran past"):
        _run_script(slow, req)
    assert not [c for c in psutil.Process().children() if c.is_running() and c.status() != "zombie"]


def _run_script(script: Path, req: ProfileRequest) -> None:
    # A "python" that ignores -m and sleeps: the runner must kill it at the deadline.
    wrapper = script.parent / "fake-python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    wrapper.chmod(0o755)
    run_child(req, timeout_secs=0.5, python=str(wrapper))


def test_a_missing_interpreter_is_a_profile_error() -> None:
    req = ProfileRequest(models=(WorstCase(TINY),), device="cpu")
    with pytest.raises(ProfileError, match="cannot start"):
        run_child(req, python="/nonexistent/python")


def test_jobs_cover_models_then_multi_model_agents() -> None:
    a, b = WorstCase("a"), WorstCase("b")
    jobs = jobs_for({"a": a, "b": b}, {"solo": [a], "pair": [a, b]})
    assert [j.label for j in jobs] == ["a", "b", "agent pair"]


def test_out_of_memory_is_recognised() -> None:
    from colo.profiling.child import _is_oom

    class OutOfMemoryError(RuntimeError):
        pass

    assert _is_oom(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_oom(RuntimeError("CUDA error: out of memory"))
    assert _is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not _is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))
