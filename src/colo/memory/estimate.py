"""Estimate a model's GPU memory without a GPU: ``colo estimate``. Always labelled "estimate".

What a process shows in NVML (``nvidia-smi``'s per-process "used memory") is modelled as::

    nvml_peak = overhead + reserved
    reserved  = allocated_peak × (1 + ALLOCATOR_SLACK) + ALLOCATOR_FLOOR, rounded up to 2 MiB
    allocated_peak = weights + activations (+ KV cache for generators)

- **weights**: the parameters and buffers of the model built on PyTorch's ``meta`` device (no memory, exact
  shapes): unique tensors only, so tied embeddings count once; floating tensors in the requested dtype.
- **activations** (inference, ``torch.inference_mode``: nothing is kept for a backward pass): the largest set
  of tensors alive at once inside one layer, for the worst-case shape. ``T = batch × seq`` tokens, ``H``
  hidden, ``I`` feed-forward width, ``A`` heads, ``S = batch × A × seq²`` attention scores, ``e`` bytes per
  element:

  - attention, fused (``sdpa`` on CUDA: memory-efficient / flash kernels, no score matrix):
    layer input + Q, K, V + output + its contiguous copy = ``6·T·H·e``;
  - attention, eager (the score matrix is materialised): ``5·T·H·e + 2·S·e`` plus a ``batch × seq²`` mask;
    MPNet and T5 keep a relative-position bias of ``S`` for the whole pass;
  - feed-forward: layer input + attention output + the ``T × I`` projection and its activation
    (gated: three ``T × I``) = ``2·T·H·e + 2·T·I·e`` (``+T·I·e`` gated);
  - the layer peak is the larger of the two; embeddings (``4·T·H·e``) come before the first layer.
- **KV cache** (generators; seq2seq decoders plus cross-attention over the prompt): ``2 × layers × batch ×
  tokens × kv_heads × head_dim × e``; the cache grows by concatenation, so the old and new copies of a layer
  coexist and the caching allocator cannot always reuse freed blocks: counted × ``KV_GROWTH``.
  The prompt's forward pass (prefill) and the last-token logits (``batch × vocab``, plus the float32 copy
  ``generate`` takes) are added.
- **overhead**: the CUDA context and library workspaces (cuBLAS), which PyTorch does not see. Measured on an
  H100 (driver 580, CUDA 13, PyTorch 2.11) as NVML − reserved ≈ 680 MiB for every model (``docs/memory.md``);
  :func:`overhead_for` refines it from the model database's measurements on the same GPU.

The estimator's error against measured NVML peaks is reported by the GPU test and in ``docs/memory.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from colo import units
from colo.errors import ProfileError
from colo.memory.catalog import Task

DEFAULT_OVERHEAD_BYTES = 680 * units.MIB
ALLOCATOR_SLACK = 0.05
ALLOCATOR_FLOOR_BYTES = 8 * units.MIB
ALLOCATOR_ROUND_BYTES = 2 * units.MIB
KV_GROWTH = 1.5
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Workload:
    """One model's worst case: ``seq_len`` is the input (encoders) or the prompt (generators, seq2seq)."""

    model_id: str
    dtype: str = "float32"
    batch_size: int = 1
    seq_len: int = 512
    new_tokens: int = 0
    path: str | None = None


@dataclass(frozen=True)
class ModelShape:
    """The numbers the formulas need, read from a meta-device build."""

    model_id: str
    task: Task
    model_type: str
    params: int
    weights_fp32_bytes: int  # floating tensors at 4 bytes + integer buffers at their size
    float_elements: int  # parameters + floating buffers (scale by the dtype)
    other_buffer_bytes: int  # integer buffers (position ids), independent of the dtype
    hidden: int
    layers: int
    decoder_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated: bool
    attention: str  # "sdpa" | "eager" | other (treated as fused)
    relative_bias: bool  # a persistent batch × heads × seq² position bias (MPNet, T5)

    def weights_bytes(self, dtype: str) -> int:
        """Parameters and buffers in ``dtype`` (integer buffers keep their own size)."""
        return self.float_elements * DTYPE_BYTES[dtype] + self.other_buffer_bytes


@dataclass(frozen=True)
class Estimate:
    """An estimated worst case. All sizes in bytes; ``nvml_peak_bytes`` is what nvidia-smi would show."""

    model_id: str
    task: Task
    dtype: str
    batch_size: int
    seq_len: int
    new_tokens: int
    params: int
    weights_bytes: int
    activation_bytes: int
    kv_cache_bytes: int
    reserved_bytes: int
    overhead_bytes: int
    overhead_source: str
    nvml_peak_bytes: int
    attention: str
    label: str = "estimate"
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``colo estimate --json``)."""
        return {
            "model": self.model_id,
            "label": self.label,
            "task": self.task,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "new_tokens": self.new_tokens,
            "params": self.params,
            "weights_bytes": self.weights_bytes,
            "activation_bytes": self.activation_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "reserved_bytes": self.reserved_bytes,
            "overhead_bytes": self.overhead_bytes,
            "overhead_source": self.overhead_source,
            "nvml_peak_bytes": self.nvml_peak_bytes,
            "attention": self.attention,
            "notes": list(self.notes),
        }


def _first(cfg: dict[str, Any], *keys: str, default: int = 0) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _meta_shape(model_id: str, path: str | None) -> ModelShape:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ProfileError(
            "estimating needs PyTorch and transformers (a meta-device build counts the parameters)",
            hint="pip install 'colo[profile]', or declare `memory:` for the model",
        ) from exc
    from colo.memory.build import build

    built = build(model_id, device="meta", path=path, random_weights=True)
    module = built.module
    seen: set[int] = set()
    params = 0
    float_elements = 0
    other_bytes = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        key = id(tensor)
        if key in seen:
            continue
        seen.add(key)
        if tensor.dtype.is_floating_point:
            float_elements += tensor.numel()
        else:
            other_bytes += tensor.numel() * tensor.element_size()
    for p in {id(p): p for p in module.parameters()}.values():
        params += p.numel()
    cfg = built.source.config
    hidden = _first(cfg, "hidden_size", "dim", "n_embd", "d_model")
    heads = _first(cfg, "num_attention_heads", "n_heads", "n_head", "num_heads", default=1)
    kv_heads = _first(cfg, "num_key_value_heads", default=heads)
    head_dim = _first(cfg, "head_dim", "d_kv", default=hidden // max(heads, 1))
    layers = _first(cfg, "num_hidden_layers", "n_layers", "n_layer", "num_layers")
    model_type = str(cfg.get("model_type", ""))
    ff_proj = str(cfg.get("feed_forward_proj", ""))
    gated = model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3") or ff_proj.startswith(
        "gated"
    )
    attention = str(getattr(module.config, "_attn_implementation", None) or "eager")
    return ModelShape(
        model_id=model_id,
        task=built.source.task,
        model_type=model_type,
        params=params,
        weights_fp32_bytes=float_elements * 4 + other_bytes,
        float_elements=float_elements,
        other_buffer_bytes=other_bytes,
        hidden=hidden,
        layers=layers,
        decoder_layers=_first(cfg, "num_decoder_layers", default=layers),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=_first(cfg, "intermediate_size", "hidden_dim", "n_inner", "d_ff", default=4 * hidden),
        vocab=_first(cfg, "vocab_size", default=1),
        gated=gated,
        attention=attention,
        relative_bias=model_type in ("mpnet", "t5", "mt5", "umt5"),
    )


@lru_cache(maxsize=128)
def _cached_shape(model_id: str, path: str | None) -> ModelShape:
    return _meta_shape(model_id, path)


def model_shape(model_id: str, path: str | None = None) -> ModelShape:
    """Shape numbers of ``model_id`` from a meta-device build (cached). Raises UnknownModelError/ProfileError."""
    return _cached_shape(model_id, path)


def _layer_peak(shape: ModelShape, batch: int, seq: int, e: int, *, kv_seq: int | None = None) -> int:
    """Bytes alive at the peak of one transformer layer over ``batch × seq`` query tokens."""
    tokens = batch * seq
    th = tokens * shape.hidden * e
    keys = seq if kv_seq is None else kv_seq
    scores = batch * shape.heads * seq * keys * e
    attention = 5 * th + 2 * scores + batch * seq * keys * e if shape.attention == "eager" else 6 * th
    ti = tokens * shape.intermediate * e
    ffn = 2 * th + (3 if shape.gated else 2) * ti
    return max(attention, ffn, 4 * th)


def _encoder_activations(shape: ModelShape, w: Workload, e: int) -> int:
    act = _layer_peak(shape, w.batch_size, w.seq_len, e)
    if shape.relative_bias:
        act += w.batch_size * shape.heads * w.seq_len * w.seq_len * e
    # the model's output (last hidden state) is alive while the pooler / head runs
    return act + w.batch_size * w.seq_len * shape.hidden * e


def _kv_bytes(shape: ModelShape, batch: int, tokens: int, layers: int, e: int) -> int:
    return 2 * layers * batch * tokens * shape.kv_heads * shape.head_dim * e


def _logits_bytes(shape: ModelShape, batch: int, e: int) -> int:
    # last-token logits in the model dtype + generate()'s float32 copy + scores after processors
    return batch * shape.vocab * (e + 4 + 4)


def _generator_parts(shape: ModelShape, w: Workload, e: int) -> tuple[int, int]:
    total = w.seq_len + w.new_tokens
    kv = _kv_bytes(shape, w.batch_size, total, shape.layers, e)
    prefill = _layer_peak(shape, w.batch_size, w.seq_len, e)
    act = prefill + _logits_bytes(shape, w.batch_size, e) + int(kv * (KV_GROWTH - 1))
    return act, kv


def _seq2seq_parts(shape: ModelShape, w: Workload, e: int) -> tuple[int, int]:
    encoder = _encoder_activations(shape, w, e)
    self_kv = _kv_bytes(shape, w.batch_size, max(w.new_tokens, 1), shape.decoder_layers, e)
    cross_kv = _kv_bytes(shape, w.batch_size, w.seq_len, shape.decoder_layers, e)
    encoder_out = w.batch_size * w.seq_len * shape.hidden * e
    decode = _layer_peak(shape, w.batch_size, 1, e, kv_seq=w.seq_len) + _logits_bytes(shape, w.batch_size, e)
    act = max(encoder, decode + encoder_out) + int(self_kv * (KV_GROWTH - 1))
    return act, self_kv + cross_kv


def reserved_for(allocated_bytes: int) -> int:
    """PyTorch's reserved (cached) memory for an allocated peak: slack for block rounding and reuse."""
    raw = math.ceil(allocated_bytes * (1 + ALLOCATOR_SLACK)) + ALLOCATOR_FLOOR_BYTES
    return units.round_up(raw, ALLOCATOR_ROUND_BYTES)


def estimate_shape(
    shape: ModelShape,
    w: Workload,
    *,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    overhead_source: str = "default (H100, CUDA 13: 680 MiB)",
) -> Estimate:
    """Estimate from already-read shape numbers (pure arithmetic; see the module docstring)."""
    if w.dtype not in DTYPE_BYTES:
        raise ProfileError(f"unknown dtype {w.dtype!r}", hint=f"use one of {', '.join(DTYPE_BYTES)}")
    e = DTYPE_BYTES[w.dtype]
    weights = shape.weights_bytes(w.dtype)
    notes: list[str] = []
    if shape.task == "encoder":
        act, kv = _encoder_activations(shape, w, e), 0
    elif shape.task == "generator":
        act, kv = _generator_parts(shape, w, e)
    else:
        act, kv = _seq2seq_parts(shape, w, e)
    if shape.attention == "eager":
        notes.append("eager attention: the batch × heads × seq² score matrix is materialised")
    reserved = reserved_for(weights + act + kv)
    return Estimate(
        model_id=shape.model_id,
        task=shape.task,
        dtype=w.dtype,
        batch_size=w.batch_size,
        seq_len=w.seq_len,
        new_tokens=w.new_tokens if shape.task != "encoder" else 0,
        params=shape.params,
        weights_bytes=weights,
        activation_bytes=act,
        kv_cache_bytes=kv,
        reserved_bytes=reserved,
        overhead_bytes=overhead_bytes,
        overhead_source=overhead_source,
        nvml_peak_bytes=reserved + overhead_bytes,
        attention=shape.attention,
        notes=tuple(notes),
    )


def estimate(
    w: Workload,
    *,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    overhead_source: str = "default (H100, CUDA 13: 680 MiB)",
) -> Estimate:
    """Estimate ``w`` (builds the model on the meta device; needs torch + transformers, no GPU).

    Raises UnknownModelError for a model colo cannot resolve, ProfileError without torch or for a bad dtype.
    """
    return estimate_shape(
        model_shape(w.model_id, w.path), w, overhead_bytes=overhead_bytes, overhead_source=overhead_source
    )


def estimate_set(
    workloads: list[Workload],
    *,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
) -> int:
    """NVML peak of several models loaded in one process (an agent) and run one request at a time:
    one overhead, every model's weights, the largest activations and KV cache of one request."""
    parts = [estimate(w, overhead_bytes=overhead_bytes) for w in workloads]
    if not parts:
        return 0
    transient = max(p.activation_bytes + p.kv_cache_bytes for p in parts)
    allocated = sum(p.weights_bytes for p in parts) + transient
    return reserved_for(allocated) + overhead_bytes
