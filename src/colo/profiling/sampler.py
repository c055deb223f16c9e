"""Sampling one process's GPU memory as NVML reports it (what ``nvidia-smi`` shows), at a steady rate.

``nvidia-smi --query-compute-apps=pid,used_memory --format=csv`` — the same number, read through a
:class:`~colo.gpu.nvml.GpuBackend`. The reader is injectable: tests pass a function instead of NVML.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from colo.errors import GpuError
from colo.gpu.nvml import GpuBackend

# A reading: (bytes used by the pid, or None when it holds no context yet; the GPU's UUID, or "").
Reader = Callable[[int], tuple[int | None, str]]

DEFAULT_INTERVAL_SECS = 0.005  # aim well above the 50 Hz the profile promises; NVML calls take ~1 ms


def nvml_reader(backend: GpuBackend) -> Reader:
    """A reader over ``backend.processes()``: the pid's used memory summed over its GPUs."""

    def read(pid: int) -> tuple[int | None, str]:
        rows = [p for p in backend.processes() if p.pid == pid]
        used = [p.used_memory_bytes for p in rows if p.used_memory_bytes is not None]
        return (sum(used) if used else None), (rows[0].gpu_uuid if rows else "")

    return read


@dataclass(frozen=True)
class SamplerStats:
    """``peak_bytes`` over ``samples`` readings in ``duration_secs`` (``rate_hz`` = samples / duration);
    ``errors``: readings that failed (NVML hiccups), ``gpu_uuid``: the GPU the pid was seen on."""

    peak_bytes: int | None
    samples: int
    duration_secs: float
    errors: int
    gpu_uuid: str

    @property
    def rate_hz(self) -> float:
        return self.samples / self.duration_secs if self.duration_secs > 0 else 0.0


class PeakSampler:
    """Reads one pid's memory every ``interval_secs`` in a background thread and keeps the peak.

    ``sample_once()`` is the whole step, so a test drives it without the thread; ``clock`` is injected.
    """

    def __init__(
        self,
        read: Reader,
        pid: int,
        *,
        interval_secs: float = DEFAULT_INTERVAL_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.pid = pid
        self.interval_secs = interval_secs
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak: int | None = None
        self._samples = 0
        self._errors = 0
        self._uuid = ""
        self._started = clock()
        self._stopped: float | None = None

    def sample_once(self) -> int | None:
        """Take one reading now; returns it (None when the pid holds no GPU memory yet or NVML failed)."""
        try:
            used, uuid = self._read(self.pid)
        except GpuError:
            with self._lock:
                self._errors += 1
            return None
        with self._lock:
            self._samples += 1
            if uuid:
                self._uuid = uuid
            if used is not None and (self._peak is None or used > self._peak):
                self._peak = used
        return used

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_secs)

    def start(self) -> PeakSampler:
        """Start the background thread (returns self)."""
        self._started = self._clock()
        self._thread = threading.Thread(target=self._loop, name=f"colo-nvml-sampler-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> SamplerStats:
        """Stop the thread (one last reading first) and return the statistics."""
        self.sample_once()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._stopped = self._clock()
        return self.stats()

    def stats(self) -> SamplerStats:
        end = self._stopped if self._stopped is not None else self._clock()
        with self._lock:
            return SamplerStats(self._peak, self._samples, max(end - self._started, 0.0), self._errors, self._uuid)
