"""NVML: the GPUs and the processes on them, as frozen snapshots. The ONLY module that imports pynvml.

``NvmlBackend`` initialises NVML lazily, once, under a lock, on the first query. Every NVML error is
translated here into :class:`colo.errors.GpuError` with a hint a person can act on (no driver, no permission,
not supported on this GPU). A query a GPU does not support for one field (temperature, power, MIG mode)
gives ``None`` for that field, never a NaN or "N/A" string.

CLI equivalents of what is read::

    nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,compute_mode,mig.mode.current,
               temperature.gpu,power.draw,utilization.gpu,utilization.memory,driver_version --format=csv
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv     (type M+C rows are MPS clients)

Raises: GpuError (exit 2) from every public method of NvmlBackend.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from colo.errors import GpuError
from colo.gpu import procs


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one moment. Bytes, percent, degrees Celsius, watts; ``None`` where the GPU cannot say."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    compute_mode: str | None = "Default"
    mig_mode: str | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    sm_util_pct: int | None = None
    mem_util_pct: int | None = None
    driver_version: str = ""
    cuda_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the ``gpus`` rows of ``colo gpu info --json``): every field but the versions."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("driver_version", "cuda_version")}


@dataclass(frozen=True)
class ClientProcess:
    """A process holding a CUDA context on a GPU. ``is_mps_client``: listed by the MPS variant of the NVML
    query (nvidia-smi type ``M+C``); ``mps_known`` is False when that query failed on its GPU, so
    ``is_mps_client`` False says nothing there (never judge membership from it). ``used_memory_bytes`` is None
    where NVML cannot see it (other PID namespace, no permission). ``cmdline``/``name`` come from
    ``colo.gpu.procs``; empty when the pid is not visible here."""

    pid: int
    gpu_index: int
    gpu_uuid: str
    used_memory_bytes: int | None
    is_mps_client: bool
    cmdline: tuple[str, ...] = ()
    name: str = ""
    mps_known: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: every field, ``cmdline`` last, as a list."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cmdline"}
        return out | {"cmdline": list(self.cmdline)}


@runtime_checkable
class GpuBackend(Protocol):
    """Where GPU snapshots come from: :class:`NvmlBackend` on a real machine, ``FakeGpuBackend`` in tests."""

    def gpus(self) -> list[GpuSnapshot]: ...

    def processes(self) -> list[ClientProcess]: ...

    def driver_version(self) -> str: ...

    def cuda_version(self) -> str: ...


def process_identity(pid: int) -> tuple[str, tuple[str, ...]]:
    """``(name, cmdline)`` of ``pid`` (``colo.gpu.procs``); ``("", ())`` when it is gone or not visible."""
    return procs.identity(pid)


_COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version integer as text: ``13000 -> "13.0"``, ``12040 -> "12.4"``."""
    return f"{version // 1000}.{(version % 1000) // 10}"


class NvmlBackend:
    """The real :class:`GpuBackend` over nvidia-ml-py (``pynvml``).

    ``nvml`` lets a test pass a stand-in module; by default ``pynvml`` is imported on first use.
    ``identify(pid) -> (name, cmdline)`` joins processes with ``colo.gpu.procs`` (injectable for tests).
    """

    def __init__(
        self,
        nvml: ModuleType | Any | None = None,
        *,
        identify: Callable[[int], tuple[str, tuple[str, ...]]] = process_identity,
    ) -> None:
        self._nvml = nvml
        self._identify = identify
        self._lock = threading.Lock()
        self._ready = False

    # --- the door -------------------------------------------------------------------------------------

    def _lib(self) -> Any:
        """The initialised NVML module. Raises GpuError (no library, no driver, no permission)."""
        with self._lock:
            if self._ready:
                return self._nvml
            if self._nvml is None:
                try:
                    import pynvml
                except ImportError as exc:
                    raise GpuError(
                        "the NVML Python bindings (nvidia-ml-py) are not installed",
                        hint="install them with `pip install nvidia-ml-py`",
                    ) from exc
                self._nvml = pynvml
            try:
                self._nvml.nvmlInit()
            except Exception as exc:
                raise self._translate(exc, "initialising NVML") from exc
            self._ready = True
            return self._nvml

    def _translate(self, exc: BaseException, doing: str) -> GpuError:
        """An NVML exception as a GpuError with a hint; anything else passes through as a GpuError too."""
        lib = self._nvml
        code = getattr(exc, "value", None)

        def const(name: str) -> object:
            return getattr(lib, name, object())

        detail = str(exc) or type(exc).__name__
        if code == const("NVML_ERROR_LIBRARY_NOT_FOUND"):
            return GpuError(
                f"no NVIDIA driver library (libnvidia-ml.so) was found while {doing}",
                hint="is the NVIDIA driver installed? try `nvidia-smi`",
            )
        if code == const("NVML_ERROR_DRIVER_NOT_LOADED"):
            return GpuError(
                f"the NVIDIA driver is not loaded ({doing})",
                hint="is the NVIDIA driver loaded? try `nvidia-smi`",
            )
        if code == const("NVML_ERROR_NO_PERMISSION"):
            return GpuError(
                f"no permission to query the GPU ({doing})",
                hint="run as a user allowed to use /dev/nvidia* (or as root)",
            )
        if code == const("NVML_ERROR_NOT_SUPPORTED"):
            return GpuError(f"not supported on this GPU: {doing}", hint="this query needs a newer GPU or driver")
        if code == const("NVML_ERROR_GPU_IS_LOST"):
            return GpuError(f"the GPU fell off the bus while {doing}", hint="check `nvidia-smi` and the kernel log")
        return GpuError(f"NVML failed while {doing}: {detail}", hint="try `nvidia-smi` to see the driver's view")

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except GpuError:
            raise
        except Exception as exc:
            raise self._translate(exc, doing) from exc

    def _optional(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A per-field query: None when the GPU does not support it (or it fails); never raises."""
        try:
            return fn(*args)
        except Exception:
            return None

    # --- GpuBackend -------------------------------------------------------------------------------------

    def driver_version(self) -> str:
        """``nvidia-smi --query-gpu=driver_version``. Raises GpuError."""
        lib = self._lib()
        return _text(self._call("reading the driver version", lib.nvmlSystemGetDriverVersion))

    def cuda_version(self) -> str:
        """The CUDA version the driver supports, e.g. ``"13.0"``. Raises GpuError."""
        lib = self._lib()
        return cuda_version_text(int(self._call("reading the CUDA version", lib.nvmlSystemGetCudaDriverVersion)))

    def _handles(self) -> list[tuple[int, Any]]:
        lib = self._lib()
        count = int(self._call("counting GPUs", lib.nvmlDeviceGetCount))
        return [(i, self._call(f"opening GPU {i}", lib.nvmlDeviceGetHandleByIndex, i)) for i in range(count)]

    def gpus(self) -> list[GpuSnapshot]:
        """Every GPU NVML sees, in index order. Raises GpuError."""
        lib = self._lib()
        driver = self.driver_version()
        cuda = self.cuda_version()
        out: list[GpuSnapshot] = []
        for index, h in self._handles():
            mem = self._call(f"reading memory of GPU {index}", lib.nvmlDeviceGetMemoryInfo, h)
            mode = self._optional(lib.nvmlDeviceGetComputeMode, h)
            mig = self._optional(lib.nvmlDeviceGetMigMode, h)
            temp = self._optional(lib.nvmlDeviceGetTemperature, h, getattr(lib, "NVML_TEMPERATURE_GPU", 0))
            power_mw = self._optional(lib.nvmlDeviceGetPowerUsage, h)
            util = self._optional(lib.nvmlDeviceGetUtilizationRates, h)
            out.append(
                GpuSnapshot(
                    index=index,
                    uuid=_text(self._call(f"reading the UUID of GPU {index}", lib.nvmlDeviceGetUUID, h)),
                    name=_text(self._call(f"reading the name of GPU {index}", lib.nvmlDeviceGetName, h)),
                    memory_total_bytes=int(mem.total),
                    memory_used_bytes=int(mem.used),
                    memory_free_bytes=int(mem.free),
                    compute_mode=_COMPUTE_MODES.get(int(mode), str(mode)) if mode is not None else None,
                    mig_mode=_mig_text(mig),
                    temperature_c=int(temp) if temp is not None else None,
                    power_w=round(int(power_mw) / 1000.0, 1) if power_mw is not None else None,
                    sm_util_pct=int(util.gpu) if util is not None else None,
                    mem_util_pct=int(util.memory) if util is not None else None,
                    driver_version=driver,
                    cuda_version=cuda,
                )
            )
        return out

    def processes(self) -> list[ClientProcess]:
        """Compute processes on every GPU, MPS clients marked, joined with their names. Raises GpuError."""
        lib = self._lib()
        out: list[ClientProcess] = []
        for index, h in self._handles():
            uuid = _text(self._call(f"reading the UUID of GPU {index}", lib.nvmlDeviceGetUUID, h))
            compute = self._call(
                f"listing compute processes on GPU {index}", lib.nvmlDeviceGetComputeRunningProcesses, h
            )
            mps_fn = getattr(lib, "nvmlDeviceGetMPSComputeRunningProcesses", None)
            mps = self._optional(mps_fn, h) if mps_fn is not None else None
            rows = merge_process_lists(index, uuid, compute or [], mps or [], self._identify)
            if mps is None:  # the MPS list could not be read: no row's MPS membership is known
                rows = [replace(r, mps_known=False) for r in rows]
            out.extend(rows)
        return out

    def close(self) -> None:
        """Shut NVML down (optional; the process exit does it too)."""
        with self._lock:
            if self._ready and self._nvml is not None:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._ready = False


def _mig_text(mig: Any) -> str | None:
    if mig is None:
        return None
    current = mig[0] if isinstance(mig, tuple | list) else mig
    return "Enabled" if int(current) == 1 else "Disabled"


def _used(info: Any) -> int | None:
    used = getattr(info, "usedGpuMemory", None)
    # NVML reports "not available" as None (pynvml) or as a huge sentinel (NVML_VALUE_NOT_AVAILABLE).
    if used is None or int(used) < 0 or int(used) >= 2**63:
        return None
    return int(used)


def merge_process_lists(
    index: int,
    uuid: str,
    compute: Sequence[Any],
    mps: Sequence[Any],
    identify: Callable[[int], tuple[str, tuple[str, ...]]],
) -> list[ClientProcess]:
    """One row per pid from NVML's compute list and its MPS list (``pid``, ``usedGpuMemory`` objects)."""
    rows: dict[int, tuple[int | None, bool]] = {}
    for info in compute:
        rows[int(info.pid)] = (_used(info), False)
    for info in mps:
        pid = int(info.pid)
        used = _used(info)
        previous = rows.get(pid)
        rows[pid] = (used if used is not None else (previous[0] if previous else None), True)
    out: list[ClientProcess] = []
    for pid, (used, is_mps) in sorted(rows.items()):
        name, cmdline = identify(pid)
        out.append(
            ClientProcess(
                pid=pid,
                gpu_index=index,
                gpu_uuid=uuid,
                used_memory_bytes=used,
                is_mps_client=is_mps,
                cmdline=cmdline,
                name=name,
            )
        )
    return out
