"""What device errors mean, and the context probe: passes, broken, hung (fakes of the device calls)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from colo.modelserver.device_errors import DeviceErrorKind, classify, first_line
from colo.modelserver.device_health import ContextWatch
from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST, EXIT_FAILED, EXIT_OK, EXIT_OOM, EXIT_USAGE


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), DeviceErrorKind.ALLOC_FAILED),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
         DeviceErrorKind.ALLOC_FAILED),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), DeviceErrorKind.ALLOC_FAILED),
        (RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be ..."),
         DeviceErrorKind.CONTEXT_LOST),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), DeviceErrorKind.CONTEXT_LOST),
        (RuntimeError("CUDA error: the remote procedural call between the MPS server and the MPS client failed"),
         DeviceErrorKind.CONTEXT_LOST),
        (RuntimeError("CUDA error: cudaErrorMpsServerNotReady"), DeviceErrorKind.CONTEXT_LOST),
        (RuntimeError("CUDA error: unspecified launch failure"), DeviceErrorKind.CONTEXT_LOST),
        (RuntimeError("shape mismatch in layer 3"), DeviceErrorKind.OTHER),
        (ValueError("out of memory"), DeviceErrorKind.OTHER),
    ],
)
def test_classify(exc: BaseException, kind: DeviceErrorKind) -> None:
    assert classify(exc) is kind


def test_first_line_is_one_short_line() -> None:
    assert first_line(RuntimeError("CUDA error: x\nstack\nmore")) == "CUDA error: x"
    assert len(first_line(RuntimeError("y" * 1000), limit=50)) == 50
    assert first_line(RuntimeError("")) == "RuntimeError"


def test_exit_codes_are_distinct() -> None:
    codes = [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OOM, EXIT_CONTEXT_LOST]
    assert len(set(codes)) == len(codes) and EXIT_CONTEXT_LOST == 4


def test_a_passing_probe_is_reused_for_its_interval() -> None:
    calls: list[int] = []
    watch = ContextWatch(lambda: calls.append(1), timeout_secs=1.0, min_interval_secs=60)
    assert watch.check() is None and watch.check() is None
    assert len(calls) == 1


def test_a_broken_context_is_reported() -> None:
    def probe() -> None:
        raise RuntimeError("CUDA error: the remote procedural call between the MPS server and the MPS client failed")

    reason = ContextWatch(probe, timeout_secs=1.0).check()
    assert reason is not None and reason.startswith("CUDA context lost") and "remote procedural call" in reason


def test_a_hung_device_does_not_hang_the_check() -> None:
    release = threading.Event()
    calls: list[int] = []

    def probe() -> None:
        calls.append(1)
        release.wait(10)

    watch = ContextWatch(probe, timeout_secs=0.1, min_interval_secs=0)
    started = time.monotonic()
    reason = watch.check()
    assert time.monotonic() - started < 2.0
    assert reason is not None and "did not answer" in reason
    assert watch.check() is not None and len(calls) == 1  # no second probe while one hangs
    release.set()
