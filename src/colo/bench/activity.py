"""GPU activity during a benchmark window: a view of the one NVML sampling loop's samples (:mod:`colo.gpu.sampler`).

Each sample records the device's SM and memory-controller utilisation (``nvidia-smi
--query-gpu=utilization.gpu,utilization.memory``), its used memory, and each benchmark instance's used memory
(``nvidia-smi --query-compute-apps=pid,used_memory``). NVML gives utilisation per device only here, so the
report says that per-instance numbers are memory.

Why it matters: a single instance that keeps the SMs ~100 % busy leaves nothing for MPS to overlap; one at
20 % leaves room. ``colo advise`` reads :attr:`GpuActivity.sm_util_mean_pct` for that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from colo.clock import SYSTEM_CLOCK, Clock
from colo.gpu.sampler import ACTIVITY_INTERVAL_SECS, Sample, Sampler, nvml_read

if TYPE_CHECKING:
    from colo.gpu.nvml import GpuBackend


# The window's summary figures in bench.json, in order: attributes of GpuActivity.
SUMMARY = ("gpu_index", "gpu_name", "sm_util_mean_pct", "mem_util_mean_pct", "memory_used_max_bytes")


@dataclass(frozen=True)
class GpuActivity:
    """Samples over one benchmark window on one GPU, and their summary."""

    gpu_index: int
    gpu_name: str
    samples: tuple[Sample, ...]

    @property
    def sm_util_mean_pct(self) -> float | None:
        """Mean device SM utilisation over the window (None without samples)."""
        if not self.samples:
            return None
        return sum(s.sm_util_pct or 0.0 for s in self.samples) / len(self.samples)

    @property
    def mem_util_mean_pct(self) -> float | None:
        if not self.samples:
            return None
        return sum(s.mem_util_pct or 0.0 for s in self.samples) / len(self.samples)

    @property
    def memory_used_max_bytes(self) -> int:
        return max((s.memory_used_bytes or 0 for s in self.samples), default=0)

    def process_memory_max_bytes(self) -> dict[int, int]:
        """Peak used memory per instance pid over the window."""
        out: dict[int, int] = {}
        for s in self.samples:
            for pid, used in s.process_memory_bytes.items():
                out[pid] = max(out.get(pid, 0), used)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The summary (:data:`SUMMARY`), the per-instance peaks and every sample."""
        return {
            **{name: getattr(self, name) for name in SUMMARY},
            "process_memory_max_bytes": {str(k): v for k, v in self.process_memory_max_bytes().items()},
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GpuActivity:
        return cls(
            gpu_index=int(raw.get("gpu_index", 0)),
            gpu_name=str(raw.get("gpu_name", "")),
            samples=tuple(Sample.from_dict(s) for s in raw.get("samples", ())),
        )


@dataclass(eq=False)
class ActivityWatch:
    """Watches GPU ``gpu_index`` (NVML index) during benchmark windows: :meth:`start` with the instances' pids,
    :meth:`stop` for the :class:`GpuActivity`. The sampling is :class:`colo.gpu.sampler.Sampler`'s; a failed
    reading is counted there and never fails the benchmark."""

    backend: GpuBackend
    gpu_index: int = 0
    interval_secs: float = field(default=ACTIVITY_INTERVAL_SECS, kw_only=True)
    clock: Clock = field(default=SYSTEM_CLOCK, kw_only=True)
    _sampler: Sampler | None = field(default=None, init=False, repr=False)
    _name: str = field(default="", init=False, repr=False)

    def sampler(self, pids: Sequence[int]) -> Sampler:
        """A sampler of this GPU and ``pids`` (not started)."""
        return Sampler(
            nvml_read(self.backend, pids, self.gpu_index),
            interval_secs=self.interval_secs,
            clock=self.clock,
            name="colo-gpu-sampler",
        )

    def start(self, pids: Sequence[int]) -> None:
        """Begin sampling, keeping per-process memory for ``pids`` only."""
        try:
            snap = next((g for g in self.backend.gpus() if g.index == self.gpu_index), None)
            self._name = snap.name if snap else ""
        except Exception:  # the name is a label; the samples say whether NVML works
            self._name = ""
        self._sampler = self.sampler(pids).start()

    def stop(self) -> GpuActivity:
        """End sampling and return what was seen."""
        samples = self._sampler.stop().samples if self._sampler is not None else ()
        self._sampler = None
        return GpuActivity(self.gpu_index, self._name, samples)
