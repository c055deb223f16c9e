"""Generator decode: tokens/s of a Llama-style model with a static KV cache and a CUDA-graph-captured step.

One request decodes ``tokens_per_request`` tokens for each of ``batch_size`` streams (graph replays back to
back, one synchronisation at the end); throughput is counted in tokens (streams × steps). The default shape
is Llama-3.1-8B in bf16 (16 GB of weights per instance). ``prepare`` also measures the device's copy bandwidth
so the report can state the memory-bandwidth bound: bandwidth / bytes read per step.
"""

from __future__ import annotations

import time
from typing import Any

from colo.bench.loads.base import RequestOutcome
from colo.bench.loads.graphs import capture, resolve_device, torch_dtype, torch_facts
from colo.bench.loads.llama import StaticLlamaDecoder, shape_named


def measure_copy_bandwidth(device: str, size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s from timed device-to-device copies (read + write counted)."""
    import torch

    src = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del src, dst
    torch.cuda.empty_cache()
    return 2.0 * size_bytes * repeats / elapsed


class DecodeWorkload:
    """Greedy decode of ``batch_size`` streams of a ``shape`` model (see :data:`llama.SHAPES`)."""

    unit = "tok"

    def __init__(
        self,
        shape: str = "llama-3.1-8b",
        batch_size: int = 1,
        tokens_per_request: int = 32,
        max_len: int = 1024,
        start_pos: int = 128,
        dtype: str = "bfloat16",
        device: str = "auto",
        cuda_graphs: bool = True,
        measure_bandwidth: bool = True,
    ) -> None:
        self.shape = shape_named(shape)
        self.shape_name = shape
        if batch_size < 1 or tokens_per_request < 1:
            raise ValueError("batch_size and tokens_per_request must be positive")
        if not 0 <= start_pos < max_len - tokens_per_request:
            raise ValueError(f"start_pos {start_pos} must leave room for {tokens_per_request} tokens in {max_len}")
        self.batch_size = batch_size
        self.tokens_per_request = tokens_per_request
        self.max_len = max_len
        self.start_pos = start_pos
        self.dtype = dtype
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.measure_bandwidth = measure_bandwidth
        self.model: StaticLlamaDecoder | None = None
        self._replay: Any = None
        self._sync: Any = None
        self._pos = start_pos

    def prepare(self) -> dict[str, Any]:
        import torch

        device = resolve_device(self.device)
        dtype = torch_dtype(self.dtype)
        info: dict[str, Any] = torch_facts()
        bandwidth = None
        if device.startswith("cuda") and self.measure_bandwidth:
            bandwidth = measure_copy_bandwidth(device)
        with torch.no_grad():  # not inference_mode: the cache is updated in place between calls
            model = StaticLlamaDecoder(
                self.shape, batch_size=self.batch_size, max_len=self.max_len, dtype=dtype, device=device
            )
            model.reset(self.start_pos)
            captured = None
            if device.startswith("cuda") and self.cuda_graphs:
                captured = capture(model.step)
            model.reset(self.start_pos)
        self.model = model

        def eager_step() -> Any:
            with torch.no_grad():
                return model.step()

        self._replay = captured[0].replay if captured is not None else eager_step
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self._pos = self.start_pos
        self.request()  # one untimed request: first replays are slower
        dtype_bytes = torch.empty((), dtype=dtype).element_size()
        step_bytes = self.shape.bytes_read_per_step(dtype_bytes, self.batch_size, self.max_len)
        info.update(
            {
                "shape": self.shape_name,
                "param_count": self.shape.param_count(),
                "batch_size": self.batch_size,
                "tokens_per_request": self.tokens_per_request,
                "max_len": self.max_len,
                "dtype": self.dtype,
                "cuda_graphs": captured is not None,
                "bytes_read_per_step": step_bytes,
                "copy_bandwidth_bytes_per_sec": bandwidth,
                "bandwidth_bound_steps_per_sec": bandwidth / step_bytes if bandwidth else None,
            }
        )
        return info

    def request(self) -> RequestOutcome:
        assert self.model is not None, "prepare() first"
        if self._pos + self.tokens_per_request >= self.max_len:
            self.model.reset(self.start_pos)  # wrap around: the static cache has max_len positions
            self._pos = self.start_pos
        for _ in range(self.tokens_per_request):
            self._replay()
        self._sync()
        self._pos += self.tokens_per_request
        return RequestOutcome(float(self.batch_size * self.tokens_per_request))

    def close(self) -> None:
        self.model = None
        self._replay = None
