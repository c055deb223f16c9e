"""Estimate a model's GPU memory without a GPU: ``colo estimate``. Always labelled "estimate".

What a process shows in NVML (``nvidia-smi``'s per-process "used memory") is modelled as::

    nvml_peak = overhead + reserved
    reserved  = weight segments + activation footprint + KV cache footprint + 32 MiB, rounded up to 2 MiB
    allocated = weights + activations (+ KV cache for generators)

- **weights**: the parameters and buffers of the model built on PyTorch's ``meta`` device (no memory, exact
  shapes): unique tensors only, so tied embeddings count once; floating tensors in the requested dtype. Their
  segments are simulated tensor by tensor with the caching allocator's rules (:mod:`colo.memory.allocator`):
  tensors of 1–10 MiB share 20 MiB segments, which leaves ~5–20 % unused for BERT-sized models.
- **activations** (inference, ``torch.inference_mode``: nothing is kept for a backward pass): the largest set
  of tensors alive at once inside one layer, for the worst-case shape. ``T = batch × seq`` tokens, ``H``
  hidden, ``I`` feed-forward width, ``A`` heads, ``S = batch × A × seq²`` attention scores, ``e`` bytes per
  element:

  - attention, fused (``sdpa`` on CUDA: memory-efficient / flash kernels, no score matrix):
    layer input + Q, K, V + output (+ one spare) = ``6·T·H·e``;
  - attention, eager (the score matrix is materialised): ``5·T·H·e + 2·S·e`` plus a ``batch × seq²`` mask;
    MPNet and T5 keep a relative-position bias of ``S`` for the whole pass;
  - feed-forward: layer input + attention output + the ``T × I`` projection and its activation
    = ``2·T·H·e + 2·T·I·e`` (gated: ``3·T·I·e``);
  - the layer peak is the larger of the two, plus the model's output ``T·H·e``.

  The allocator's footprint for them (**activation footprint**) is the most blocks of each size alive at
  once — same-sized blocks reuse each other's cached segments from layer to layer, but a larger request
  never reuses smaller freed segments: ``6·T·H + 2·T·I`` blocks for fused attention (BERT-like models at
  batch 32 × 512: ~25 % above the allocated peak), the score matrices for eager attention.
- **KV cache** (generators; seq2seq decoders plus cross-attention over the prompt): ``2 × layers × batch ×
  tokens × kv_heads × head_dim × e``. It grows by concatenation — every generated token re-allocates each
  layer's keys and values one token longer and frees the old ones — and freed blocks of growing sizes are
  hard to reuse: its footprint is simulated step by step with the allocator model (1.1–2.7 × the final
  cache depending on the shapes). The prompt's forward pass (prefill) and the last-token logits
  (``batch × vocab``, plus the float32 copy ``generate`` takes) are added.
- **overhead**: the CUDA context and library workspaces (cuBLAS), which PyTorch does not see. Measured on an
  H100 (driver 580, CUDA 13, PyTorch 2.11) as NVML − reserved ≈ 680 MiB for every model (``docs/memory.md``);
  the model database refines it from measurements on the same GPU (``ModelDB.overhead_for``).

The estimator's error against measured NVML peaks is reported by the GPU test and in ``docs/memory.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from importlib import resources
from typing import Any

from colo import units
from colo.errors import ProfileError
from colo.memory import catalog
from colo.memory.allocator import kv_cache_footprint, segment_footprint
from colo.memory.build import DTYPE_BYTES
from colo.memory.catalog import Task
from colo.memory.worst_case import WorstCase

DEFAULT_OVERHEAD_BYTES = 680 * units.MIB
ALLOCATOR_SLACK = 0.05
# cuBLAS(Lt) workspace (32 MiB on Hopper), allocated through PyTorch's caching allocator, plus small blocks
ALLOCATOR_FLOOR_BYTES = 32 * units.MIB
ALLOCATOR_ROUND_BYTES = 2 * units.MIB


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

    # (elements, fixed bytes per element or 0 for "the model dtype"), in the order the model creates them
    tensors: tuple[tuple[int, int], ...] = ()

    def weights_bytes(self, dtype: str) -> int:
        """Parameters and buffers in ``dtype`` (integer buffers keep their own size)."""
        return self.float_elements * DTYPE_BYTES[dtype] + self.other_buffer_bytes

    def weights_reserved_bytes(self, dtype: str) -> int:
        """The caching allocator's segments for the weights, allocated one tensor after another
        (:func:`segment_footprint`); without a tensor list, weights × (1 + ALLOCATOR_SLACK)."""
        if not self.tensors:
            return math.ceil(self.weights_bytes(dtype) * (1 + ALLOCATOR_SLACK))
        e = DTYPE_BYTES[dtype]
        return segment_footprint([n * (fixed or e) for n, fixed in self.tensors])


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
    weights_reserved_bytes: int
    activation_bytes: int
    activation_reserved_bytes: int
    kv_cache_bytes: int
    kv_cache_reserved_bytes: int
    reserved_bytes: int
    overhead_bytes: int
    overhead_source: str
    nvml_peak_bytes: int
    attention: str
    label: str = "estimate"
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``colo estimate --json``): every field, ``model`` and ``label`` first."""
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model_id", "label")}
        return {"model": self.model_id, "label": self.label} | rest | {"notes": list(self.notes)}


def _first(cfg: dict[str, Any], *keys: str, default: int = 0) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _creation_order(module: Any) -> list[tuple[int, Any]]:
    """Parameters and buffers with their position in module order (parameters before buffers per module)."""
    out: list[tuple[int, Any]] = []
    for sub in module.modules():
        for t in list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False)):
            out.append((len(out), t))
    return out


def _meta_shape(model_id: str, path: str | None) -> ModelShape:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ProfileError(
            "estimating a model outside colo's catalog needs PyTorch and transformers (a meta-device build counts the parameters)",
            hint="pip install 'colo[profile]', or declare `memory:` for the model",
        ) from exc
    from colo.memory.build import build

    built = build(model_id, device="meta", path=path, random_weights=True)
    module = built.module
    seen: set[int] = set()
    params = 0
    float_elements = 0
    other_bytes = 0
    tensors: list[tuple[int, int]] = []
    for _, tensor in sorted(_creation_order(module), key=lambda item: item[0]):
        key = id(tensor)
        if key in seen:
            continue
        seen.add(key)
        if tensor.dtype.is_floating_point:
            float_elements += tensor.numel()
            tensors.append((tensor.numel(), 0))
        else:
            other_bytes += tensor.numel() * tensor.element_size()
            tensors.append((tensor.numel(), tensor.element_size()))
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
        tensors=tuple(tensors),
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


def measure_shape(model_id: str, path: str | None = None) -> ModelShape:
    """Shape numbers of ``model_id`` from a meta-device build now (needs torch + transformers; no GPU).
    Raises UnknownModelError/ProfileError."""
    return _meta_shape(model_id, path)


@lru_cache(maxsize=1)
def catalog_shapes() -> dict[str, ModelShape]:
    """The shape numbers precomputed for the catalog models (``catalog/shapes.json``, written by
    ``scripts/catalog_shapes.py``): estimating a catalog model needs no torch."""
    try:
        text = resources.files("colo.memory").joinpath("catalog", "shapes.json").read_text(encoding="utf-8")
        raw = json.loads(text).get("shapes", {})
    except (OSError, ValueError):
        return {}
    out = {}
    for mid, d in raw.items():
        d = dict(d, tensors=tuple((int(n), int(f)) for n, f in d.get("tensors", ())))
        out[mid] = ModelShape(**d)
    return out


@lru_cache(maxsize=128)
def _cached_shape(model_id: str, path: str | None) -> ModelShape:
    if path is None:
        found = catalog_shapes().get(catalog.canonical_id(model_id))
        if found is not None:
            return replace(found, model_id=model_id) if found.model_id != model_id else found
    return _meta_shape(model_id, path)


def model_shape(model_id: str, path: str | None = None) -> ModelShape:
    """Shape numbers of ``model_id`` (cached): precomputed for catalog models, else from a meta-device build.
    Raises UnknownModelError, ProfileError (a model outside the catalog without torch)."""
    return _cached_shape(model_id, path)


def _block(size_bytes: int) -> int:
    """A tensor's footprint in the caching allocator: large blocks are rounded to 2 MiB segments."""
    return units.round_up(size_bytes, ALLOCATOR_ROUND_BYTES)


def _layer(shape: ModelShape, batch: int, seq: int, e: int, *, kv_seq: int | None = None) -> tuple[int, int]:
    """``(allocated, reserved)`` bytes of one transformer layer's transient tensors over ``batch × seq``
    query tokens: the most alive at once, and the caching allocator's footprint for them.

    Same-sized blocks reuse each other's cached segments from layer to layer, but a request larger than every
    free block gets a segment of its own (the allocator never merges separate segments). So the footprint is
    the most blocks of each size alive at once: ``6·T·H`` blocks and the feed-forward's ``T × I`` blocks —
    unless a freed score matrix is large enough to hold the latter.
    """
    tokens = batch * seq
    keys = seq if kv_seq is None else kv_seq
    th = tokens * shape.hidden * e
    ti = tokens * shape.intermediate * e
    scores = batch * shape.heads * seq * keys * e
    mask = batch * seq * keys * e
    eager = shape.attention == "eager"
    k = 3 if shape.gated else 2
    attention = 5 * th + 2 * scores + mask if eager else 6 * th
    ffn = max(2 * th + k * ti, 5 * th + ti)
    allocated = max(attention, ffn, 4 * th)
    blocks = 6 * _block(th)
    if eager:
        blocks += 2 * _block(scores) + _block(mask)
    if not eager or ti > scores:
        blocks += k * _block(ti)
    return allocated, max(allocated, blocks)


def _encoder_parts(shape: ModelShape, w: WorstCase, e: int) -> tuple[int, int]:
    allocated, reserved = _layer(shape, w.batch_size, w.seq_len, e)
    persistent = 0
    if shape.relative_bias:  # kept for the whole pass
        persistent += w.batch_size * shape.heads * w.seq_len * w.seq_len * e
    # the model's output (last hidden state) is alive while the pooler / head runs
    output = w.batch_size * w.seq_len * shape.hidden * e
    return allocated + persistent + output, max(reserved, allocated + output) + persistent


def _kv_bytes(shape: ModelShape, batch: int, tokens: int, layers: int, e: int) -> int:
    return 2 * layers * batch * tokens * shape.kv_heads * shape.head_dim * e


def _logits_bytes(shape: ModelShape, batch: int, e: int) -> int:
    # last-token logits in the model dtype + generate()'s float32 copy + scores after processors
    return batch * shape.vocab * (e + 4 + 4)


def _generator_parts(shape: ModelShape, w: WorstCase, e: int) -> tuple[int, int, int, int]:
    """``(activations, activation footprint, KV cache, KV cache footprint)`` of one generate() call."""
    total = w.seq_len + w.new_tokens
    kv = _kv_bytes(shape, w.batch_size, total, shape.layers, e)
    per_token = w.batch_size * shape.kv_heads * shape.head_dim * e
    kv_res = kv_cache_footprint(shape.layers, per_token, w.seq_len, w.new_tokens)
    allocated, reserved = _layer(shape, w.batch_size, w.seq_len, e)
    logits = _logits_bytes(shape, w.batch_size, e)
    return allocated + logits, reserved + logits, kv, kv_res


def _seq2seq_parts(shape: ModelShape, w: WorstCase, e: int) -> tuple[int, int, int, int]:
    enc_alloc, enc_res = _encoder_parts(shape, w, e)
    self_kv = _kv_bytes(shape, w.batch_size, max(w.new_tokens, 1), shape.decoder_layers, e)
    cross_kv = _kv_bytes(shape, w.batch_size, w.seq_len, shape.decoder_layers, e)
    per_token = w.batch_size * shape.kv_heads * shape.head_dim * e
    kv_res = kv_cache_footprint(
        shape.decoder_layers, per_token, 0, max(w.new_tokens, 1), fixed_bytes=per_token * w.seq_len
    )
    encoder_out = w.batch_size * w.seq_len * shape.hidden * e
    dec_alloc, dec_res = _layer(shape, w.batch_size, 1, e, kv_seq=w.seq_len)
    logits = _logits_bytes(shape, w.batch_size, e)
    allocated = max(enc_alloc, dec_alloc + encoder_out + logits)
    reserved = max(enc_res, dec_res + encoder_out + logits)
    return allocated, reserved, self_kv + cross_kv, kv_res


def reserved_for(allocated_bytes: int) -> int:
    """PyTorch's reserved (cached) memory for an allocated peak: slack for block rounding and reuse."""
    raw = math.ceil(allocated_bytes * (1 + ALLOCATOR_SLACK)) + ALLOCATOR_FLOOR_BYTES
    return units.round_up(raw, ALLOCATOR_ROUND_BYTES)


def _reserved(weights_reserved: int, act_reserved: int, kv_reserved: int) -> int:
    raw = weights_reserved + act_reserved + kv_reserved + ALLOCATOR_FLOOR_BYTES
    return units.round_up(raw, ALLOCATOR_ROUND_BYTES)


def estimate_shape(
    shape: ModelShape,
    w: WorstCase,
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
        act, act_res = _encoder_parts(shape, w, e)
        kv = kv_res = 0
    elif shape.task == "generator":
        act, act_res, kv, kv_res = _generator_parts(shape, w, e)
    else:
        act, act_res, kv, kv_res = _seq2seq_parts(shape, w, e)
    if shape.attention == "eager":
        notes.append("eager attention: the batch × heads × seq² score matrix is materialised")
    reserved = _reserved(shape.weights_reserved_bytes(w.dtype), act_res, kv_res)
    return Estimate(
        model_id=shape.model_id,
        task=shape.task,
        dtype=w.dtype,
        batch_size=w.batch_size,
        seq_len=w.seq_len,
        new_tokens=w.new_tokens if shape.task != "encoder" else 0,
        params=shape.params,
        weights_bytes=weights,
        weights_reserved_bytes=shape.weights_reserved_bytes(w.dtype),
        activation_bytes=act,
        activation_reserved_bytes=act_res,
        kv_cache_bytes=kv,
        kv_cache_reserved_bytes=kv_res,
        reserved_bytes=reserved,
        overhead_bytes=overhead_bytes,
        overhead_source=overhead_source,
        nvml_peak_bytes=reserved + overhead_bytes,
        attention=shape.attention,
        notes=tuple(notes),
    )


def estimate(
    w: WorstCase,
    *,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    overhead_source: str = "default (H100, CUDA 13: 680 MiB)",
) -> Estimate:
    """Estimate ``w`` (builds the model on the meta device; needs torch + transformers, no GPU).

    Raises UnknownModelError for a model colo cannot resolve, ProfileError without torch or for a bad dtype.
    """
    return estimate_shape(
        model_shape(w.model, w.path), w, overhead_bytes=overhead_bytes, overhead_source=overhead_source
    )


def estimate_set(
    workloads: list[WorstCase],
    *,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
) -> int:
    """NVML peak of several models loaded in one process (an agent) and run one request at a time:
    one overhead, every model's weights, the largest activations and KV cache of one request."""
    parts = [estimate(w, overhead_bytes=overhead_bytes) for w in workloads]
    if not parts:
        return 0
    weights = sum(p.weights_reserved_bytes for p in parts)
    worst = max(parts, key=lambda p: p.activation_reserved_bytes + p.kv_cache_reserved_bytes)
    return _reserved(weights, worst.activation_reserved_bytes, worst.kv_cache_reserved_bytes) + overhead_bytes
