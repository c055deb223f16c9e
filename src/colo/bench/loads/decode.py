"""Generator decode: tokens/s of a Llama-style model with a static KV cache and a CUDA-graph-captured step.

The request loop and settings are :class:`~colo.bench.loads.static_decode.StaticDecodeWorkload`'s. The default shape
is Llama-3.1-8B in bf16 (16 GB of weights per instance). ``prepare`` also measures the device's copy bandwidth
so the report can state the memory-bandwidth bound: bandwidth / bytes read per step.
"""

from __future__ import annotations

import time
from typing import Any

from colo.bench.llama_shapes import shape_named
from colo.bench.loads.graphs import capture, resolve_device, torch_dtype, torch_facts
from colo.bench.loads.llama import StaticLlamaDecoder
from colo.bench.loads.static_decode import StaticDecodeWorkload


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


class DecodeWorkload(StaticDecodeWorkload):
    """Greedy decode of ``batch_size`` streams of a ``shape`` model (see :data:`colo.bench.llama_shapes.SHAPES`); the other
    settings are :class:`StaticDecodeWorkload`'s."""

    default_max_len, default_start_pos, default_dtype = 1024, 128, "bfloat16"

    def __init__(self, shape: str = "llama-3.1-8b", *, measure_bandwidth: bool = True, **settings: Any) -> None:
        self.shape = shape_named(shape)
        self.shape_name = shape
        super().__init__(**settings)
        self.measure_bandwidth = measure_bandwidth
        self.model: StaticLlamaDecoder | None = None

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

        self._ready(
            captured[0].replay if captured is not None else eager_step,
            lambda: model.reset(self.start_pos),
            torch.cuda.synchronize if device.startswith("cuda") else (lambda: None),
        )
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

    def close(self) -> None:
        super().close()
        self.model = None
