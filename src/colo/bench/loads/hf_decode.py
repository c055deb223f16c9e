"""Generator decode through transformers with a static KV cache (e.g. distilgpt2), CUDA-graph captured.

The model comes from :func:`colo.memory.build.build_model`; a ``transformers.StaticCache`` of ``max_len``
positions holds the keys and values, and one forward of a single token per stream (static ``input_ids``,
``cache_position`` and ``position_ids`` tensors, updated in place) is captured as a CUDA graph. Where the
model's code cannot be captured, it runs eagerly and ``cuda_graphs: false`` says so in the report.
"""

from __future__ import annotations

from typing import Any

from colo.bench.loads.base import RequestOutcome
from colo.bench.loads.graphs import capture, resolve_device, torch_dtype, torch_facts


class HfDecodeWorkload:
    """Greedy one-token steps of a catalog generator with ``transformers.StaticCache``."""

    unit = "tok"

    def __init__(
        self,
        model: str = "distilgpt2",
        batch_size: int = 1,
        tokens_per_request: int = 32,
        max_len: int = 256,
        start_pos: int = 16,
        dtype: str = "float16",
        device: str = "auto",
        cuda_graphs: bool = True,
        path: str | None = None,
    ) -> None:
        if not 0 < start_pos < max_len - tokens_per_request:
            raise ValueError(f"start_pos {start_pos} must leave room for {tokens_per_request} tokens in {max_len}")
        self.model_id = model
        self.batch_size = batch_size
        self.tokens_per_request = tokens_per_request
        self.max_len = max_len
        self.start_pos = start_pos
        self.dtype = dtype
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.path = path
        self._step: Any = None
        self._sync: Any = None
        self._reset: Any = None
        self._pos = start_pos
        self._keep: list[Any] = []

    def prepare(self) -> dict[str, Any]:
        import torch
        from transformers import StaticCache

        from colo.memory.build import build_model

        device = resolve_device(self.device)
        dtype_name = self.dtype if device != "cpu" else "float32"
        torch_dtype(dtype_name)
        module = build_model(self.model_id, dtype=dtype_name, device=device, path=self.path)
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
        self._step = captured[0].replay if captured is not None else step
        self._reset = reset
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self._keep = [module, cache, tokens, cache_position, position_ids, captured]
        self._pos = self.start_pos
        self.request()
        return {
            **torch_facts(),
            "model": self.model_id,
            "batch_size": self.batch_size,
            "tokens_per_request": self.tokens_per_request,
            "max_len": self.max_len,
            "dtype": dtype_name,
            "cuda_graphs": captured is not None,
        }

    def request(self) -> RequestOutcome:
        if self._pos + self.tokens_per_request >= self.max_len:
            self._reset()
            self._pos = self.start_pos
        for _ in range(self.tokens_per_request):
            self._step()
        self._sync()
        self._pos += self.tokens_per_request
        return RequestOutcome(float(self.batch_size * self.tokens_per_request))

    def close(self) -> None:
        self._keep.clear()
        self._step = None
