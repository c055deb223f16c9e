"""What a device error means for the agent: an allocation failure (the request fails, the agent stays up), a
lost CUDA context (the agent can serve nothing more and must exit), or something else.

torch reports CUDA, cuBLAS and cuDNN failures as ``RuntimeError`` (``torch.OutOfMemoryError``,
``torch.AcceleratorError`` are subclasses) whose text carries the CUDA error name or message, so the
classification reads the text. Markers, and why:

- allocation: ``out of memory`` (CUDA and the caching allocator), ``CUBLAS_STATUS_ALLOC_FAILED``,
  ``CUDNN_STATUS_ALLOC_FAILED`` (a library's workspace did not fit under the MPS limit);
- context lost: sticky errors that poison the context (device-side assert, illegal address or instruction,
  misaligned address, launch failure, ECC), MPS client errors 805–807 and 810 (connection or RPC to the MPS
  server failed, server not ready or gone, client terminated), a device that fell off the bus or was lost.
"""

from __future__ import annotations

import enum

ALLOC_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")
CONTEXT_LOST_MARKERS = (
    "device-side assert",
    "illegal memory access",
    "illegal address",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "uncorrectable ecc",
    "hardware stack error",
    "cudaerrormps",  # cudaErrorMpsConnectionFailed / RpcFailure / ServerNotReady / ClientTerminated ...
    "mps server",
    "mps client",
    "remote procedural call",
    "fallen off the bus",
    "gpu is lost",
    "device is lost",
    "cuda driver version is insufficient",
    "initialization error",
    "context is destroyed",
)


class DeviceErrorKind(enum.Enum):
    """What an exception raised by device work means."""

    ALLOC_FAILED = "alloc_failed"  # the request fails with 507; the agent stays up
    CONTEXT_LOST = "context_lost"  # 503; the agent exits with EXIT_CONTEXT_LOST
    OTHER = "other"  # not a device condition: a bug, re-raised as it is


def classify(exc: BaseException) -> DeviceErrorKind:
    """The kind of ``exc`` (only ``RuntimeError`` and its subclasses are device errors)."""
    if not isinstance(exc, RuntimeError):
        return DeviceErrorKind.OTHER
    text = str(exc).lower()
    if any(marker in text for marker in ALLOC_MARKERS):
        return DeviceErrorKind.ALLOC_FAILED
    if any(marker in text for marker in CONTEXT_LOST_MARKERS):
        return DeviceErrorKind.CONTEXT_LOST
    return DeviceErrorKind.OTHER


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, cut to ``limit`` characters: what one log line carries."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
