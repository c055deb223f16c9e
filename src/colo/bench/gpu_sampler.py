"""GPU activity during a benchmark window: NVML samples through colo's :class:`~colo.gpu.nvml.GpuBackend`.

Each sample records the device's SM and memory-controller utilisation (``nvidia-smi
--query-gpu=utilization.gpu,utilization.memory``), its used memory, and each benchmark instance's used memory
(``nvidia-smi --query-compute-apps=pid,used_memory``). When the backend also offers per-process SM
utilisation (a ``process_utilization(gpu_index) -> {pid: sm_pct}`` method, NVML's
``nvmlDeviceGetProcessUtilization``), it is recorded per instance too; otherwise the report says that only
device-level utilisation was available.

Why it matters: a single instance that keeps the SMs ~100 % busy leaves nothing for MPS to overlap; one at
20 % leaves room. ``colo advise`` reads :attr:`GpuActivity.sm_util_mean_pct` for that reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from colo.gpu.nvml import GpuBackend


@dataclass(frozen=True)
class GpuSample:
    """One moment: seconds since the window began, device utilisation (%), memory, per-pid numbers."""

    t_secs: float
    sm_util_pct: float
    mem_util_pct: float
    memory_used_bytes: int
    process_memory_bytes: Mapping[int, int] = field(default_factory=dict)
    process_sm_pct: Mapping[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "t_secs": round(self.t_secs, 4),
            "sm_util_pct": self.sm_util_pct,
            "mem_util_pct": self.mem_util_pct,
            "memory_used_bytes": self.memory_used_bytes,
            "process_memory_bytes": {str(k): v for k, v in self.process_memory_bytes.items()},
            "process_sm_pct": {str(k): v for k, v in self.process_sm_pct.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GpuSample:
        return cls(
            t_secs=float(raw["t_secs"]),
            sm_util_pct=float(raw["sm_util_pct"]),
            mem_util_pct=float(raw["mem_util_pct"]),
            memory_used_bytes=int(raw["memory_used_bytes"]),
            process_memory_bytes={int(k): int(v) for k, v in dict(raw.get("process_memory_bytes", {})).items()},
            process_sm_pct={int(k): float(v) for k, v in dict(raw.get("process_sm_pct", {})).items()},
        )


@dataclass(frozen=True)
class GpuActivity:
    """Samples over one benchmark window on one GPU, and their summary."""

    gpu_index: int
    gpu_name: str
    samples: tuple[GpuSample, ...]
    per_process_util: bool

    @property
    def sm_util_mean_pct(self) -> float | None:
        """Mean device SM utilisation over the window (None without samples)."""
        if not self.samples:
            return None
        return sum(s.sm_util_pct for s in self.samples) / len(self.samples)

    @property
    def mem_util_mean_pct(self) -> float | None:
        if not self.samples:
            return None
        return sum(s.mem_util_pct for s in self.samples) / len(self.samples)

    @property
    def memory_used_max_bytes(self) -> int:
        return max((s.memory_used_bytes for s in self.samples), default=0)

    def process_memory_max_bytes(self) -> dict[int, int]:
        """Peak used memory per instance pid over the window."""
        out: dict[int, int] = {}
        for s in self.samples:
            for pid, used in s.process_memory_bytes.items():
                out[pid] = max(out.get(pid, 0), used)
        return out

    def process_sm_mean_pct(self) -> dict[int, float]:
        """Mean SM utilisation per instance pid (empty when NVML gave no per-process numbers)."""
        sums: dict[int, float] = {}
        counts: dict[int, int] = {}
        for s in self.samples:
            for pid, pct in s.process_sm_pct.items():
                sums[pid] = sums.get(pid, 0.0) + pct
                counts[pid] = counts.get(pid, 0) + 1
        return {pid: sums[pid] / counts[pid] for pid in sums}

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_index": self.gpu_index,
            "gpu_name": self.gpu_name,
            "per_process_util": self.per_process_util,
            "sm_util_mean_pct": self.sm_util_mean_pct,
            "mem_util_mean_pct": self.mem_util_mean_pct,
            "memory_used_max_bytes": self.memory_used_max_bytes,
            "process_memory_max_bytes": {str(k): v for k, v in self.process_memory_max_bytes().items()},
            "process_sm_mean_pct": {str(k): v for k, v in self.process_sm_mean_pct().items()},
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GpuActivity:
        return cls(
            gpu_index=int(raw.get("gpu_index", 0)),
            gpu_name=str(raw.get("gpu_name", "")),
            samples=tuple(GpuSample.from_dict(s) for s in raw.get("samples", ())),
            per_process_util=bool(raw.get("per_process_util", False)),
        )


def take_sample(backend: GpuBackend, gpu_index: int, pids: Sequence[int], t_secs: float) -> GpuSample | None:
    """One sample of GPU ``gpu_index`` (NVML index), keeping per-process numbers for ``pids`` only.

    Returns None when the backend does not list that GPU. Backend errors (GpuError) propagate.
    """
    snap = next((g for g in backend.gpus() if g.index == gpu_index), None)
    if snap is None:
        return None
    wanted = set(pids)
    memory = {
        p.pid: p.used_memory_bytes
        for p in backend.processes()
        if p.pid in wanted and p.gpu_index == gpu_index and p.used_memory_bytes is not None
    }
    sm: dict[int, float] = {}
    per_proc = getattr(backend, "process_utilization", None)
    if callable(per_proc):
        raw = per_proc(gpu_index)
        sm = {int(pid): float(pct) for pid, pct in dict(raw).items() if int(pid) in wanted}
    return GpuSample(
        t_secs=t_secs,
        sm_util_pct=float(snap.sm_util_pct or 0),
        mem_util_pct=float(snap.mem_util_pct or 0),
        memory_used_bytes=int(snap.memory_used_bytes),
        process_memory_bytes=memory,
        process_sm_pct=sm,
    )


class GpuSampler:
    """Samples one GPU every ``interval_secs`` on a background thread between :meth:`start` and :meth:`stop`.

    A sampling error ends sampling quietly (the benchmark itself must not fail because NVML hiccuped);
    :attr:`error` keeps its text for the report.
    """

    def __init__(
        self,
        backend: GpuBackend,
        gpu_index: int = 0,
        *,
        interval_secs: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.gpu_index = gpu_index
        self.interval_secs = interval_secs
        self.clock = clock
        self.error: str | None = None
        self._samples: list[GpuSample] = []
        self._pids: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._name = ""

    def start(self, pids: Sequence[int]) -> None:
        """Begin sampling, attributing per-process numbers to ``pids``."""
        self._pids = list(pids)
        self._samples = []
        self._stop.clear()
        self._start = self.clock()
        try:
            snap = next((g for g in self.backend.gpus() if g.index == self.gpu_index), None)
            self._name = snap.name if snap else ""
        except Exception as exc:
            self.error = str(exc)
            return
        self._thread = threading.Thread(target=self._loop, name="colo-gpu-sampler", daemon=True)
        self._thread.start()

    def sample_once(self) -> None:
        """Take one sample now (the loop calls this; tests call it directly)."""
        sample = take_sample(self.backend, self.gpu_index, self._pids, self.clock() - self._start)
        if sample is not None:
            self._samples.append(sample)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:
                self.error = str(exc)
                return
            self._stop.wait(self.interval_secs)

    def stop(self) -> GpuActivity:
        """End sampling and return what was seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        per_proc = callable(getattr(self.backend, "process_utilization", None))
        return GpuActivity(self.gpu_index, self._name, tuple(self._samples), per_proc)
