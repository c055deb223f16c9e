"""Running work as the built-in agent's device thread does, for the GPU tests of the agent's forward
(``test_graphs_gpu.py``, ``test_cuda_wait_gpu.py``)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from colo.modelserver.cuda_graphs import use_own_stream

DEVICE = "cuda"
T = TypeVar("T")


def on_device_thread(work: Callable[[], T], device: str = DEVICE) -> T:
    """``work()`` on a thread of its own that runs on a stream of its own, as the agent's device thread does
    (the stream dies with the thread; pytest's thread keeps the default stream)."""

    def run() -> T:
        use_own_stream(device)
        return work()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()
