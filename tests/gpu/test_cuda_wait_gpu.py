"""The device thread's wait for a forward (``colo.modelserver.inference.CudaWait``) on a real GPU, in process,
no MPS: all-MiniLM-L6-v2 (random weights, float16), 32 × 128 per batch, on a device thread of its own stream as
the agent runs it. About 10 s.

Waiting on a blocking event gives the same answers as spinning, and leaves the CPU: the thread's CPU time per
batch (``time.thread_time``) is a fraction of the spinning wait's, which holds a core for the whole forward::

    GPU-RESULT cuda_wait spin_cpu_ms=... block_cpu_ms=... spin_wall_ms=... block_wall_ms=...
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from colo.modelserver.cuda_graphs import use_own_stream
from colo.modelserver.inference import BatchResult, run_merged
from colo.modelserver.loading import LoadedModel, load_model
from colo.spec.config import ModelSpec

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SPEC = ModelSpec(dtype="float16", batch_size=32, max_seq_len=128)
BATCHES = 200
FLOAT16 = {"rtol": 2e-2, "atol": 2e-2}


@pytest.fixture(autouse=True)
def cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def rows() -> list[list[int]]:
    return [[1000 + (r * 31 + c * 7) % 20000 for c in range(128)] for r in range(32)]


def timed(model: LoadedModel, block: bool) -> tuple[BatchResult, float, float]:
    """The last batch, and the mean thread CPU and wall milliseconds per batch over :data:`BATCHES`."""
    ids = rows()
    for _ in range(20):
        run_merged(model, [ids], device=DEVICE, raw=[True], block_wait=block)
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(BATCHES):
        last = run_merged(model, [ids], device=DEVICE, raw=[True], block_wait=block)[0]
    cpu_ms = (time.thread_time() - cpu) * 1000.0 / BATCHES
    wall_ms = (time.perf_counter() - wall) * 1000.0 / BATCHES
    return last, cpu_ms, wall_ms


def test_a_blocking_wait_answers_the_same_and_leaves_the_cpu() -> None:
    def work() -> tuple[tuple[BatchResult, float, float], tuple[BatchResult, float, float], list[float]]:
        use_own_stream(DEVICE)
        model = load_model(MINILM, SPEC, device=DEVICE)
        spin, block = timed(model, False), timed(model, True)
        forwards = [run_merged(model, [rows()], device=DEVICE, block_wait=True)[0].forward_ms for _ in range(20)]
        return spin, block, forwards

    with ThreadPoolExecutor(1) as pool:
        (spun, spin_cpu, spin_wall), (blocked, block_cpu, block_wall), forwards = pool.submit(work).result()
    print(
        f"GPU-RESULT cuda_wait spin_cpu_ms={spin_cpu:.3f} block_cpu_ms={block_cpu:.3f} "
        f"spin_wall_ms={spin_wall:.3f} block_wall_ms={block_wall:.3f} "
        f"forward_ms_p50={statistics.median(forwards):.3f}",
        flush=True,
    )
    np.testing.assert_allclose(blocked.outputs["vectors"], spun.outputs["vectors"], **FLOAT16)
    assert blocked.forward_ms > 0
    # spinning holds the core for the forward; sleeping does not (the launches and formatting remain)
    assert block_cpu < spin_cpu, (block_cpu, spin_cpu)
