"""A fake :class:`~colo.gpu.nvml.GpuBackend` for tests of the layers above (never used outside tests).

It returns the snapshots it was given, lets a test change them (``set_processes``), and can fail the way the
real backend fails (``error=GpuError(...)``) so the CLI's and API's error paths are tested on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from colo.errors import GpuError
from colo.gpu.nvml import ClientProcess, GpuSnapshot
from colo.units import GIB


def fake_gpu(
    index: int = 0,
    *,
    name: str = "NVIDIA H100 80GB HBM3",
    memory_total_bytes: int = 80 * GIB,
    memory_used_bytes: int = 0,
    uuid: str | None = None,
) -> GpuSnapshot:
    """A plausible GpuSnapshot for tests; the UUID is derived from the index unless given."""
    return GpuSnapshot(
        index=index,
        uuid=uuid or f"GPU-00000000-0000-0000-0000-{index:012d}",
        name=name,
        memory_total_bytes=memory_total_bytes,
        memory_used_bytes=memory_used_bytes,
        memory_free_bytes=memory_total_bytes - memory_used_bytes,
        compute_mode="Default",
        mig_mode="Disabled",
        temperature_c=35,
        power_w=70.0,
        sm_util_pct=0,
        mem_util_pct=0,
        driver_version="580.00.00",
        cuda_version="13.0",
    )


class FakeGpuBackend:
    """In-memory GPUs and processes. ``error`` makes every query raise it (e.g. "no driver")."""

    def __init__(
        self,
        gpus: Sequence[GpuSnapshot] = (),
        processes: Sequence[ClientProcess] = (),
        *,
        driver: str = "580.00.00",
        cuda: str = "13.0",
        error: GpuError | None = None,
    ) -> None:
        self._gpus = list(gpus)
        self._processes = list(processes)
        self._driver = driver
        self._cuda = cuda
        self.error = error
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error

    def gpus(self) -> list[GpuSnapshot]:
        self._check()
        return list(self._gpus)

    def processes(self) -> list[ClientProcess]:
        self._check()
        return list(self._processes)

    def driver_version(self) -> str:
        self._check()
        return self._driver

    def cuda_version(self) -> str:
        self._check()
        return self._cuda

    def set_processes(self, processes: Sequence[ClientProcess]) -> None:
        self._processes = list(processes)
