"""Generator decode through transformers with a static KV cache (e.g. distilgpt2), CUDA-graph captured.

The model comes from :func:`colo.memory.build.build`; a ``transformers.StaticCache`` of ``max_len``
positions holds the keys and values, and one forward of a single token per stream (static ``input_ids``,
``cache_position`` and ``position_ids`` tensors, updated in place) is captured as a CUDA graph. Where the
model's code cannot be captured, it runs eagerly and ``cuda_graphs: false`` says so in the report. The request
loop and settings are :class:`~colo.bench.loads.static_decode.StaticDecodeWorkload`'s.
"""

from __future__ import annotations

from typing import Any

from colo.bench.loads.graphs import capture, resolve_device, torch_dtype, torch_facts
from colo.bench.loads.static_decode import StaticDecodeWorkload


class HfDecodeWorkload(StaticDecodeWorkload):
    """Greedy one-token steps of a catalog generator with ``transformers.StaticCache`` (``path``: its local
    weights); the other settings are :class:`StaticDecodeWorkload`'s."""

    min_start_pos = 1  # decoding starts after position 0, as this workload always required
    default_max_len, default_start_pos, default_dtype = 256, 16, "float16"

    def __init__(self, model: str = "distilgpt2", *, path: str | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.model_id = model
        self.path = path
        self._keep: list[Any] = []

    def prepare(self) -> dict[str, Any]:
        import torch
        from transformers import StaticCache

        from colo.memory.build import build

        device = resolve_device(self.device)
        dtype_name = self.dtype if device != "cpu" else "float32"
        torch_dtype(dtype_name)
        module = build(self.model_id, dtype=dtype_name, device=device, path=self.path).module
        module.eval()
        cache = StaticCache(config=module.config, max_cache_len=self.max_len)
        vocab = int(module.config.vocab_size)
        tokens = torch.randint(0, vocab, (self.batch_size, 1), device=device)
        cache_position = torch.tensor([self.start_pos], device=device, dtype=torch.long)
        position_ids = torch.full((self.batch_size, 1), self.start_pos, device=device, dtype=torch.long)

        def step() -> Any:
            with torch.inference_mode():
                out = module(
                    input_ids=tokens,
                    past_key_values=cache,
                    cache_position=cache_position,
                    position_ids=position_ids,
                    use_cache=True,
                )
                tokens.copy_(out.logits[:, -1:].argmax(dim=-1))
                cache_position.add_(1)
                position_ids.add_(1)
            return tokens

        def reset() -> None:
            cache_position.fill_(self.start_pos)
            position_ids.fill_(self.start_pos)
            # transformers 5.x static layers keep their own write position (``cumulative_length``, a device
            # tensor, graph-safe) and ignore ``cache_position``: rewind it too, or the cache overflows.
            # It was created during the first (inference-mode) step, so it may only be updated in that mode.
            with torch.inference_mode():
                for layer in getattr(cache, "layers", ()):
                    length = getattr(layer, "cumulative_length", None)
                    if isinstance(length, torch.Tensor):
                        length.fill_(self.start_pos)
                    elif length is not None:
                        layer.cumulative_length = self.start_pos

        step()  # the first call allocates the static cache's tensors
        reset()
        captured = None
        if device.startswith("cuda") and self.cuda_graphs:
            captured = capture(step)
            reset()
        self._keep = [module, cache, tokens, cache_position, position_ids, captured]
        self._ready(
            captured[0].replay if captured is not None else step,
            reset,
            torch.cuda.synchronize if device.startswith("cuda") else (lambda: None),
        )
        return {
            **torch_facts(),
            "model": self.model_id,
            "batch_size": self.batch_size,
            "tokens_per_request": self.tokens_per_request,
            "max_len": self.max_len,
            "dtype": dtype_name,
            "cuda_graphs": captured is not None,
        }

    def close(self) -> None:
        super().close()
        self._keep.clear()
