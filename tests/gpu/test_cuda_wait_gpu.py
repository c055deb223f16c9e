"""The device thread's wait for a batch (``colo.modelserver.inference.CudaWait``) on a real GPU, in process, no
MPS. About 10 s.

1. Waiting on a blocking event leaves the CPU while the GPU works: a kernel that keeps the GPU busy for ~30 ms
   (``torch.cuda._sleep``), then the wait; the thread's CPU time (``time.thread_time``) over the wait is most
   of it when spinning and a small part of it when blocking::

       GPU-RESULT cuda_wait gpu_ms=... spin_cpu_ms=... block_cpu_ms=...

2. A batch waited for blocking answers as one waited for spinning: all-MiniLM-L6-v2 (random weights, float16),
   8 × 128, on a device thread of its own stream as the agent runs it.

(An eager forward of a small model is launch-bound — the GPU finishes soon after the last launch, so how the
thread waits hardly matters there; it matters for replayed graphs and a GPU shared by many agents, where the
wait is most of a batch.)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from device_thread import DEVICE, on_device_thread

from colo.modelserver.inference import run_merged, synchronize
from colo.modelserver.loading import load_model
from colo.spec.config import ModelSpec

pytestmark = pytest.mark.gpu

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SPEC = ModelSpec(dtype="float16", batch_size=8, max_seq_len=128)
SLEEP_CYCLES = 50_000_000  # ~30 ms at the clocks of an H100 or H200
WAITS = 8
FLOAT16 = {"rtol": 2e-2, "atol": 2e-2}


@pytest.fixture(autouse=True)
def cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def test_a_blocking_wait_leaves_the_cpu_while_the_gpu_works() -> None:
    import torch

    def waits(block: bool) -> tuple[float, float]:
        """Mean wall and thread-CPU milliseconds of a wait for a ~30 ms kernel."""
        wall = cpu = 0.0
        for _ in range(WAITS):
            torch.cuda._sleep(SLEEP_CYCLES)
            w, c = time.perf_counter(), time.thread_time()
            synchronize(DEVICE, block=block)
            wall += time.perf_counter() - w
            cpu += time.thread_time() - c
        return wall * 1000.0 / WAITS, cpu * 1000.0 / WAITS

    def work() -> tuple[tuple[float, float], tuple[float, float]]:
        torch.cuda._sleep(1000)
        synchronize(DEVICE)
        return waits(False), waits(True)

    (spin_wall, spin_cpu), (block_wall, block_cpu) = on_device_thread(work)
    print(
        f"GPU-RESULT cuda_wait gpu_ms={spin_wall:.1f}/{block_wall:.1f} spin_cpu_ms={spin_cpu:.2f} "
        f"block_cpu_ms={block_cpu:.2f}",
        flush=True,
    )
    assert spin_wall > 5 and block_wall > 5, (spin_wall, block_wall)  # the kernel kept the GPU busy
    assert spin_cpu > 0.5 * spin_wall, (spin_cpu, spin_wall)  # spinning: the core held
    assert block_cpu < 0.2 * block_wall, (block_cpu, block_wall)  # sleeping: the core left


def test_a_batch_waited_for_blocking_answers_as_spinning() -> None:
    ids = [[1000 + (r * 31 + c * 7) % 20000 for c in range(128)] for r in range(8)]

    def work() -> list[Any]:
        model = load_model(MINILM, SPEC, device=DEVICE)
        return [run_merged(model, [ids], device=DEVICE, raw=[True], block_wait=b)[0] for b in (False, True)]

    spun, blocked = on_device_thread(work)
    np.testing.assert_allclose(blocked.outputs["vectors"], spun.outputs["vectors"], **FLOAT16)
    assert blocked.forward_ms > 0 and spun.forward_ms > 0
