"""The one table of Llama-architecture shapes the benchmarks build: the static-cache decoder
(:mod:`colo.bench.loads.llama`) and the random-weight GGUF for llama.cpp (:mod:`colo.bench.gguf_random`).

Field names follow Hugging Face's ``LlamaConfig`` (``hidden_size`` → ``hidden``, ``num_hidden_layers`` →
``layers``, ``num_attention_heads`` → ``heads``, ``num_key_value_heads`` → ``kv_heads``,
``intermediate_size`` → ``intermediate``, ``max_position_embeddings`` → ``context``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from colo.errors import UsageError


@dataclass(frozen=True)
class LlamaShape:
    """A Llama-architecture shape (``head_dim`` = hidden / heads). Raises ValueError when the heads do not
    divide the hidden size, the KV heads do not divide the heads, or the head dimension is odd (RoPE)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    name: str = "custom"
    context: int = 131072
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 2:
            raise ValueError(
                f"inconsistent shape {self}: hidden/heads and heads/kv_heads must divide evenly, head_dim be even"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection: head_dim × KV heads."""
        return self.head_dim * self.kv_heads

    def layer_params(self) -> int:
        """Parameters of one decoder layer (attention, MLP, two norms)."""
        qkv = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        out = self.hidden * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return qkv + out + mlp + 2 * self.hidden

    def param_count(self) -> int:
        """All parameters (embedding and LM head untied, as in Llama-3.1-8B: 8.03 B)."""
        return self.layers * self.layer_params() + 2 * self.vocab * self.hidden + self.hidden

    def bytes_read_per_step(self, dtype_bytes: int, batch_size: int, max_len: int) -> int:
        """Bytes one decode step must read from memory: every weight except the embedding table (one row
        per stream), plus the static KV cache."""
        weights = (self.param_count() - self.vocab * self.hidden) * dtype_bytes
        kv = 2 * self.layers * batch_size * self.kv_heads * max_len * self.head_dim * dtype_bytes
        return weights + kv


SHAPES: dict[str, LlamaShape] = {
    # meta-llama/Llama-3.1-8B config.json
    "llama-3.1-8b": LlamaShape(4096, 32, 32, 8, 14336, 128256, name="llama-3.1-8b"),
    # meta-llama/Llama-3.2-1B config.json (its LM head is tied; the GGUF writes it untied)
    "llama-3.2-1b": LlamaShape(2048, 16, 32, 8, 8192, 128256, name="llama-3.2-1b"),
    # For CPU tests: tiny but complete, and K-quant-compatible (hidden and intermediate multiples of 256).
    "tiny": LlamaShape(256, 2, 4, 2, 512, 512, name="tiny", context=2048),
}


def shape_named(name: str, **overrides: int) -> LlamaShape:
    """A shape from :data:`SHAPES`, with fields overridden where the value is not 0 (e.g. ``layers=2``).

    Raises UsageError naming the known shapes for an unknown one, or for overrides that do not divide.
    """
    if name not in SHAPES:
        raise UsageError(f"unknown Llama shape {name!r}; use one of {', '.join(SHAPES)}")
    changes: dict[str, Any] = {k: v for k, v in overrides.items() if v}
    try:
        return dataclasses.replace(SHAPES[name], **changes)
    except ValueError as exc:
        raise UsageError(f"shape {name!r} with {changes}: {exc}") from exc
