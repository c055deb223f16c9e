"""NvmlBackend against a stand-in pynvml module: snapshots, MPS clients, error translation at the door."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from colo.errors import GpuError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.nvml import (
    ClientProcess,
    GpuBackend,
    NvmlBackend,
    cuda_version_text,
    merge_process_lists,
)
from colo.units import GIB, MIB


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"nvml error {value}")
        self.value = value


def fake_pynvml(*, init_error: int | None = None, temp_error: int | None = None, mps: bool = True, n: int = 2) -> Any:
    """A module-like object with the pynvml functions NvmlBackend calls."""
    calls: dict[str, int] = {"init": 0}

    def init() -> None:
        calls["init"] += 1
        if init_error is not None:
            raise NVMLError(init_error)

    def temperature(h: int, sensor: int) -> int:
        if temp_error is not None:
            raise NVMLError(temp_error)
        return 40 + h

    procs = {0: [SimpleNamespace(pid=100, usedGpuMemory=900 * MIB), SimpleNamespace(pid=200, usedGpuMemory=None)]}
    mps_procs = {0: [SimpleNamespace(pid=200, usedGpuMemory=2 * GIB)]}
    mod = SimpleNamespace(
        NVML_ERROR_LIBRARY_NOT_FOUND=12,
        NVML_ERROR_DRIVER_NOT_LOADED=9,
        NVML_ERROR_NO_PERMISSION=4,
        NVML_ERROR_NOT_SUPPORTED=3,
        NVML_ERROR_GPU_IS_LOST=15,
        NVML_TEMPERATURE_GPU=0,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"580.159.04",
        nvmlSystemGetCudaDriverVersion=lambda: 13000,
        nvmlDeviceGetCount=lambda: n,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-uuid-{h}",
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=80 * GIB, used=GIB * (h + 1), free=80 * GIB - GIB * (h + 1)
        ),
        nvmlDeviceGetComputeMode=lambda h: 0 if h == 0 else 3,
        nvmlDeviceGetMigMode=lambda h: (0, 0),
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetPowerUsage=lambda h: 70_500,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=12, memory=3),
        nvmlDeviceGetComputeRunningProcesses=lambda h: procs.get(h, []),
    )
    if mps:
        mod.nvmlDeviceGetMPSComputeRunningProcesses = lambda h: mps_procs.get(h, [])
    return mod


def ident(pid: int) -> tuple[str, tuple[str, ...]]:
    return (f"proc{pid}", ("python3", f"agent{pid}.py"))


def test_gpus_snapshot_fields_and_units() -> None:
    lib = fake_pynvml()
    gpus = NvmlBackend(lib, identify=ident).gpus()
    assert [g.index for g in gpus] == [0, 1]
    g0, g1 = gpus
    assert g0.uuid == "GPU-uuid-0" and g0.name == "NVIDIA H100 80GB HBM3"
    assert (g0.memory_total_bytes, g0.memory_used_bytes, g0.memory_free_bytes) == (80 * GIB, GIB, 79 * GIB)
    assert g0.compute_mode == "Default" and g1.compute_mode == "Exclusive_Process"
    assert g0.mig_mode == "Disabled"
    assert g0.temperature_c == 40 and g1.temperature_c == 41
    assert g0.power_w == 70.5
    assert (g0.sm_util_pct, g0.mem_util_pct) == (12, 3)
    assert (g0.driver_version, g0.cuda_version) == ("580.159.04", "13.0")


def test_nvml_is_initialised_once_lazily() -> None:
    lib = fake_pynvml()
    backend = NvmlBackend(lib, identify=ident)
    assert lib.calls["init"] == 0
    backend.gpus()
    backend.processes()
    backend.driver_version()
    assert lib.calls["init"] == 1


def test_unsupported_field_is_none_not_an_error() -> None:
    gpus = NvmlBackend(fake_pynvml(temp_error=3), identify=ident).gpus()
    assert gpus[0].temperature_c is None
    assert gpus[0].power_w == 70.5


def test_processes_mark_mps_clients_and_join_psutil() -> None:
    procs = NvmlBackend(fake_pynvml(), identify=ident).processes()
    by_pid = {p.pid: p for p in procs}
    assert set(by_pid) == {100, 200}
    assert by_pid[100].is_mps_client is False and by_pid[100].used_memory_bytes == 900 * MIB
    assert by_pid[200].is_mps_client is True and by_pid[200].used_memory_bytes == 2 * GIB
    assert by_pid[200].gpu_uuid == "GPU-uuid-0" and by_pid[200].gpu_index == 0
    assert by_pid[200].cmdline == ("python3", "agent200.py") and by_pid[200].name == "proc200"


def test_processes_without_mps_query_in_old_bindings() -> None:
    procs = NvmlBackend(fake_pynvml(mps=False), identify=ident).processes()
    assert not any(p.is_mps_client for p in procs)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (12, "no NVIDIA driver library"),
        (9, "driver is not loaded"),
        (4, "no permission"),
        (3, "not supported on this GPU"),
        (999, "NVML failed"),
    ],
)
def test_init_errors_become_gpu_errors_with_hints(code: int, words: str) -> None:
    backend = NvmlBackend(fake_pynvml(init_error=code), identify=ident)
    with pytest.raises(GpuError) as info:
        backend.gpus()
    assert words in str(info.value)
    assert info.value.hint
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_failed_init_is_retried_next_time() -> None:
    lib = fake_pynvml(init_error=9)
    backend = NvmlBackend(lib, identify=ident)
    with pytest.raises(GpuError):
        backend.gpus()
    with pytest.raises(GpuError):
        backend.gpus()
    assert lib.calls["init"] == 2


def test_merge_uses_mps_memory_when_compute_list_has_none() -> None:
    rows = merge_process_lists(
        0,
        "GPU-x",
        [SimpleNamespace(pid=5, usedGpuMemory=None)],
        [SimpleNamespace(pid=5, usedGpuMemory=None)],
        ident,
    )
    assert rows == [ClientProcess(5, 0, "GPU-x", None, True, ("python3", "agent5.py"), "proc5")]


def test_cuda_version_text() -> None:
    assert cuda_version_text(13000) == "13.0"
    assert cuda_version_text(12040) == "12.4"


def test_fake_backend_is_a_gpu_backend_and_fails_on_demand() -> None:
    fake = FakeGpuBackend([fake_gpu(0)])
    assert isinstance(fake, GpuBackend)
    assert isinstance(NvmlBackend(fake_pynvml()), GpuBackend)
    assert fake.gpus()[0].memory_free_bytes == 80 * GIB
    fake.error = GpuError("no driver")
    with pytest.raises(GpuError):
        fake.processes()
