"""The real :class:`colo.modelserver.graphs.GraphBackend`: ``torch.cuda.CUDAGraph`` capture and replay of an encoder
forward, the one place of the agent that captures graphs. torch is imported inside functions.

A capture follows torch's recipe (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs): a static input
tensor, :data:`WARMUP_RUNS` eager forwards on a non-default stream (lazy initialisation, workspaces), then the
capture on that same stream into the model's pool. The capture is ``thread_local``: the agent's context probe
(``device_health``) keeps running on its own thread and stream meanwhile.

Which stream: a graph cannot be captured on the legacy default stream, and cuBLAS keeps a workspace per stream
(32 MiB on a Hopper GPU), so a capture on a stream of its own would hold a second workspace for good. The
agent's device thread therefore runs ALL its work on a stream of its own from before its warm-up
(:func:`use_own_stream`): graphs are captured and replayed on that stream, whose workspace the warm-up already
holds. A caller still on the default stream gets a side stream (and its workspace, counted in the capture's
bytes).

A failed capture keeps nothing referenced, so its pool can go back with :meth:`TorchGraphBackend.release`;
some torch versions keep the pool of a capture whose ``capture_end`` failed for the process's life (at most
one per model: graphs stay off for a model after a failure).

Memory: ``torch.cuda.graph`` empties the caching allocator's cache as it starts, so a capture empties it first
too and measures reserved memory from there: what is held after the capture and was not before is the
capture's (its pool's new segments, the static input). The cached blocks of eager batches go back to the
device with it; the next worst-case batch takes them again.
"""

from __future__ import annotations

from typing import Any

from colo.modelserver.graphs import DeviceMemory

#: Eager forwards of a new shape on the side stream before it is captured.
WARMUP_RUNS = 2


def use_own_stream(device: str) -> None:
    """Run the calling thread's CUDA work on ``device`` on a new stream of its own from now on (``torch.cuda.
    set_stream`` is per thread). The agent's device thread calls it before its warm-up; see the module
    docstring."""
    import torch

    torch.cuda.set_stream(torch.cuda.Stream(device))  # type: ignore[no-untyped-call]


class TorchCapturedForward:
    """One captured forward: its graph, static input and static output (held for the graph's life)."""

    def __init__(self, graph: Any, static_ids: Any, output: Any) -> None:
        self._graph = graph
        self._static_ids = static_ids
        self._output = output

    def replay(self, input_ids: Any) -> Any:
        """Copy ``input_ids`` into the static input, replay on the current stream, return the static output."""
        self._static_ids.copy_(input_ids)
        self._graph.replay()
        return self._output


class TorchGraphBackend:
    """CUDA graphs on ``device`` (``cuda`` / ``cuda:N``) through torch."""

    def __init__(self, device: str, *, warmup_runs: int = WARMUP_RUNS) -> None:
        self.device = device
        self.warmup_runs = warmup_runs
        self._side: Any = None  # the side stream of a caller on the default stream (made at its first capture)

    def memory(self) -> DeviceMemory:
        import torch

        free, _total = torch.cuda.mem_get_info(self.device)
        return DeviceMemory(
            reserved_bytes=int(torch.cuda.memory_reserved(self.device)),
            peak_reserved_bytes=int(torch.cuda.max_memory_reserved(self.device)),
            free_bytes=int(free),
        )

    def new_pool(self) -> object:
        import torch

        return torch.cuda.graph_pool_handle()

    def capture(self, module: Any, input_ids: Any, pool: object) -> tuple[TorchCapturedForward, int]:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        before = int(torch.cuda.memory_reserved(self.device))
        current = torch.cuda.current_stream(self.device)
        stream = current
        if current == torch.cuda.default_stream(self.device):
            if self._side is None:
                self._side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            stream = self._side
        static_ids = input_ids.clone()
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_runs):
                module(input_ids=static_ids)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):  # type: ignore[arg-type]
                output = module(input_ids=static_ids)
        except BaseException:
            # Nothing of a failed capture may stay referenced: its pool goes back with the next release.
            del graph, static_ids
            raise
        added = max(0, int(torch.cuda.memory_reserved(self.device)) - before)
        return TorchCapturedForward(graph, static_ids, output), added

    def release(self) -> None:
        """Collect garbage first (a failed capture's traceback may have held tensors of its pool in reference
        cycles), then empty the cache: the pools of dropped graphs go back to the device."""
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
