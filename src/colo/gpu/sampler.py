"""The one NVML sampling loop: a GPU and some processes on it, read at a steady rate on a background thread.

Each :class:`Sample` holds the watched pids' used memory (``nvidia-smi --query-compute-apps=pid,used_memory``)
and, when a GPU is watched, the device's SM and memory-controller utilisation and used memory
(``nvidia-smi --query-gpu=utilization.gpu,utilization.memory,memory.used``), read through a
:class:`~colo.gpu.nvml.GpuBackend`. NVML offers no per-process SM utilisation here: utilisation is the
device's.

Two views of the samples: the profiler keeps one child's peak (:meth:`Samples.peak`, at ~200 Hz, no device
query), the benchmark the GPU's activity over a window (``colo.bench.activity.GpuActivity``, every 0.2 s).
A failed reading (:class:`~colo.errors.GpuError`: an NVML hiccup) is counted, never raised: sampling goes on
and the measurement stands. Time is a :class:`~colo.clock.Clock`; ``sample_once()`` is the whole step, so a
test drives it without the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import GpuError
from colo.gpu.nvml import GpuBackend

PEAK_INTERVAL_SECS = 0.005  # the profiler: well above the 50 Hz it promises; NVML calls take ~1 ms
ACTIVITY_INTERVAL_SECS = 0.2  # a benchmark window: device utilisation is itself averaged by the driver


@dataclass(frozen=True)
class Sample:
    """One reading, ``t_secs`` after sampling began.

    ``process_memory_bytes``: each watched pid's used memory (bytes, summed over the GPUs read); a pid is
    absent while it holds no context or NVML cannot see its memory. ``process_gpu_uuid``: the GPU each
    watched pid was seen on. Device fields are None when no GPU is watched.
    """

    t_secs: float
    process_memory_bytes: Mapping[int, int] = field(default_factory=dict)
    process_gpu_uuid: Mapping[int, str] = field(default_factory=dict)
    sm_util_pct: float | None = None
    mem_util_pct: float | None = None
    memory_used_bytes: int | None = None

    def memory_of(self, pid: int) -> int | None:
        """``pid``'s used memory in this sample (None: no context yet, or not visible)."""
        return self.process_memory_bytes.get(pid)

    def to_dict(self) -> dict[str, Any]:
        """The device and memory figures (``bench.json``'s samples)."""
        return {
            "t_secs": round(self.t_secs, 4),
            "sm_util_pct": self.sm_util_pct,
            "mem_util_pct": self.mem_util_pct,
            "memory_used_bytes": self.memory_used_bytes,
            "process_memory_bytes": {str(k): v for k, v in self.process_memory_bytes.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Sample:
        def num(key: str) -> float | None:
            value = raw.get(key)
            return None if value is None else float(value)

        used = raw.get("memory_used_bytes")
        return cls(
            t_secs=float(raw["t_secs"]),
            process_memory_bytes={int(k): int(v) for k, v in dict(raw.get("process_memory_bytes", {})).items()},
            sm_util_pct=num("sm_util_pct"),
            mem_util_pct=num("mem_util_pct"),
            memory_used_bytes=None if used is None else int(used),
        )


# One reading at ``t_secs``: a Sample, or None when there is nothing to read (the GPU is not listed).
Read = Callable[[float], Sample | None]


def nvml_read(backend: GpuBackend, pids: Sequence[int], gpu_index: int | None = None) -> Read:
    """A reading of ``pids`` through ``backend``: their memory on every GPU, or — with ``gpu_index`` (NVML
    index) — on that GPU only, with the device's utilisation and memory. Raises GpuError (from the backend)."""
    wanted = set(pids)

    def read(t_secs: float) -> Sample | None:
        device = None
        if gpu_index is not None:
            device = next((g for g in backend.gpus() if g.index == gpu_index), None)
            if device is None:
                return None
        memory: dict[int, int] = {}
        uuids: dict[int, str] = {}
        for p in backend.processes():
            if p.pid not in wanted or (gpu_index is not None and p.gpu_index != gpu_index):
                continue
            uuids.setdefault(p.pid, p.gpu_uuid)
            if p.used_memory_bytes is not None:
                memory[p.pid] = memory.get(p.pid, 0) + p.used_memory_bytes
        if device is None:
            return Sample(t_secs, memory, uuids)
        return Sample(
            t_secs,
            memory,
            uuids,
            sm_util_pct=float(device.sm_util_pct or 0),
            mem_util_pct=float(device.mem_util_pct or 0),
            memory_used_bytes=int(device.memory_used_bytes),
        )

    return read


@dataclass(frozen=True)
class PeakStats:
    """One pid's view of the samples: ``peak_bytes`` over ``samples`` readings in ``duration_secs``
    (``rate_hz`` = samples / duration); ``errors``: readings that failed; ``gpu_uuid``: the GPU it was seen on."""

    peak_bytes: int | None
    samples: int
    duration_secs: float
    errors: int
    gpu_uuid: str

    @property
    def rate_hz(self) -> float:
        return self.samples / self.duration_secs if self.duration_secs > 0 else 0.0


@dataclass(frozen=True)
class Samples:
    """What a :class:`Sampler` saw: the samples, over ``duration_secs``, and the readings that failed."""

    samples: tuple[Sample, ...]
    duration_secs: float
    errors: int = 0
    last_error: str = ""

    @property
    def rate_hz(self) -> float:
        return len(self.samples) / self.duration_secs if self.duration_secs > 0 else 0.0

    def peak(self, pid: int) -> PeakStats:
        """The highest memory ``pid`` used in any sample, and the last GPU it was seen on."""
        used = [s.process_memory_bytes[pid] for s in self.samples if pid in s.process_memory_bytes]
        uuid = next((s.process_gpu_uuid[pid] for s in reversed(self.samples) if s.process_gpu_uuid.get(pid)), "")
        return PeakStats(max(used) if used else None, len(self.samples), self.duration_secs, self.errors, uuid)


class Sampler:
    """Takes a :data:`Read` every ``interval_secs`` on a background thread between :meth:`start` and
    :meth:`stop` (one last reading on stop), and keeps the samples."""

    def __init__(
        self,
        read: Read,
        *,
        interval_secs: float = ACTIVITY_INTERVAL_SECS,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "colo-nvml-sampler",
    ) -> None:
        self._read = read
        self.interval_secs = interval_secs
        self.clock: Clock = clock
        self._name = name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[Sample] = []
        self._errors = 0
        self._last_error = ""
        self._started = self.clock.monotonic()
        self._stopped: float | None = None

    def sample_once(self) -> Sample | None:
        """Take one reading now; returns it (None when there was nothing to read or the reading failed)."""
        try:
            sample = self._read(self.clock.monotonic() - self._started)
        except GpuError as exc:
            with self._lock:
                self._errors += 1
                self._last_error = str(exc)
            return None
        if sample is not None:
            with self._lock:
                self._samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_secs)

    def start(self) -> Sampler:
        """Start the background thread (returns self); times count from now."""
        self._started = self.clock.monotonic()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Samples:
        """Stop the thread (one last reading first) and return what was seen."""
        self.sample_once()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._stopped = self.clock.monotonic()
        return self.samples()

    def samples(self) -> Samples:
        """What was seen so far (all of it, once stopped)."""
        end = self._stopped if self._stopped is not None else self.clock.monotonic()
        with self._lock:
            return Samples(tuple(self._samples), max(end - self._started, 0.0), self._errors, self._last_error)
