"""The one reader of this node's GPUs: NVML and every GPU's MPS daemon, read together into a :class:`GpuState`.

The supervisor polls it once per tick interval and publishes the result in its snapshot; ``colo serve`` (no
supervisor) polls one of its own. Nothing else reads NVML or the MPS control pipes for the API.

:meth:`GpuPoller.read` never raises for a GPU problem: no GPU backend, or NVML failing, gives the seed's
keys with ``mps_enabled: false`` and an ``error`` that says why, so ``/gpu/info`` and ``/metrics`` always
answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from colo.errors import ColoError
from colo.gpu.info import gpu_info
from colo.gpu.mps.control import MpsControl
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuBackend

#: Bounds each MPS command of a reading, whatever ``command_timeout_secs`` says: a daemon that stops answering
#: delays a reading (and the supervision loop that takes it) by at most this much. Noticing that it stopped
#: answering is the probe's work (``colo.supervise.recovery.mps_probe``), not the reading's.
READ_TIMEOUT_SECS = 1.0

NO_GPU_HINT = "no GPU backend: colo sees no NVIDIA GPU here (is the driver loaded? try `nvidia-smi`)"


def no_gpu_document(reason: str) -> dict[str, Any]:
    """The seed's keys for a machine where the GPUs cannot be read, with the reason."""
    return {
        "mps_enabled": False,
        "mps": {"enabled": False, "pipe_dir": None, "control_process": False},
        "gpus": [],
        "processes": [],
        "driver_version": None,
        "cuda_version": None,
        "error": reason,
    }


@dataclass(frozen=True)
class GpuState:
    """The :func:`colo.gpu.info.gpu_info` document at one moment (``colo gpu info --json``): GPUs, each GPU's
    MPS daemon with its servers and clients, every GPU process. ``error`` when the GPUs could not be read.
    Never mutated once made: readers copy before they change anything."""

    info: Mapping[str, Any]
    error: str | None = None

    def process_memory_bytes(self) -> dict[int, int]:
        """GPU memory per process id (NVML's ``usedGpuMemory``), for the processes that report it."""
        out: dict[int, int] = {}
        for row in self.info.get("processes", []):
            used = row.get("used_memory_bytes")
            if isinstance(used, int):
                out[int(row["pid"])] = used
        return out


def no_gpu_state(reason: str = NO_GPU_HINT) -> GpuState:
    """The state of a node whose GPUs cannot be read."""
    return GpuState(no_gpu_document(reason), reason)


class GpuPoller:
    """Reads NVML (``backend``) and the MPS daemon of every GPU under ``root`` (through ``control``; the real
    ``nvidia-cuda-mps-control`` when None), each MPS command bounded by ``command_timeout_secs`` and at most
    :data:`READ_TIMEOUT_SECS` (so a daemon that stops answering delays one read by that much at most). ``backend`` None: no GPU here, every read
    says so."""

    def __init__(
        self,
        backend: GpuBackend | None,
        root: MpsRoot,
        control: MpsControl | None = None,
        *,
        command_timeout_secs: float | None = None,
    ) -> None:
        self.backend = backend
        self.root = root
        self.control = control
        self.command_timeout_secs = command_timeout_secs

    def read(self) -> GpuState:
        """Read everything now. Never raises for GPU/MPS failures (see :attr:`GpuState.error`)."""
        if self.backend is None:
            return no_gpu_state()
        try:
            asked = self.command_timeout_secs
            timeout = READ_TIMEOUT_SECS if asked is None else min(asked, READ_TIMEOUT_SECS)
            info = gpu_info(self.backend, self.root, self.control, command_timeout_secs=timeout)
            return GpuState(info)
        except (ColoError, OSError) as err:
            reason = str(err) or type(err).__name__
            return no_gpu_state(reason)
