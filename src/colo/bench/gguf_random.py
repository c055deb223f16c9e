"""A random-weight GGUF of a real architecture, for benchmarking llama.cpp's ``llama-server`` offline.

``colo bench make-gguf --shape llama-3.1-8b --quant q4_k --out F.gguf --vocab-from ggml-vocab-llama-bpe.gguf``
writes a Llama-shaped file (32 layers, hidden 4096, 32 heads, 8 KV heads, ff 14336, vocab 128256, rope theta
500000; Q4_K weights, ~4.6 GiB) whose tokenizer is copied from a vocab-only GGUF (llama.cpp ships
``models/ggml-vocab-llama-bpe.gguf``, the Llama-3 tokenizer). Weights are random: the server computes at full
cost but samples random tokens, so benchmarks send ``ignore_eos`` with a fixed number of tokens.

Speed: quantized blocks are written directly as random bytes (no float quantization). One pool of random
blocks (:data:`POOL_BYTES`) is generated once, every block's fp16 super-block scales ``d``/``dmin`` set to
small finite values (so activations stay finite, never NaN), and every tensor is a window of that pool at a
random block offset. Writing 5 GB is then disk speed. Needs llama.cpp's ``gguf`` package (``gguf-py`` in its
source, or ``pip install gguf``), imported here only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colo.bench.llama_shapes import LlamaShape
from colo.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

#: Random bytes generated once and reused (windows at random offsets) for every quantized tensor.
POOL_BYTES = 64 * 1024 * 1024
#: fp16 super-block scale and minimum of every random Q4_K / Q5_K block: weights of about ±0.01.
BLOCK_D = 4e-5
BLOCK_DMIN = 3.2e-4
#: GGUF ``general.file_type`` for the whole file (llama.cpp's ``LLAMA_FTYPE_MOSTLY_*``).
FILE_TYPES = {"q4_k": 15, "q8_0": 7, "f16": 1}
#: Llama 3 Instruct's chat template, added when the vocabulary GGUF carries none (llama.cpp recognises it).
LLAMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def check_quantizable(shape: LlamaShape) -> LlamaShape:
    """``shape`` when llama.cpp's K-quants can store it: hidden and intermediate sizes multiples of 256 (one
    super-block). Raises UsageError naming the field otherwise."""
    for field, value in (("hidden", shape.hidden), ("intermediate", shape.intermediate)):
        if value % 256:
            raise UsageError(f"shape {shape.name!r}: {field} {value} is not a multiple of 256 (K-quant super-blocks)")
    return shape


@dataclass(frozen=True)
class TensorPlan:
    """One tensor: GGUF name, ggml dims (``ne0`` first: the row length), and whether it is quantized."""

    name: str
    dims: tuple[int, ...]
    quantized: bool


def tensor_plan(shape: LlamaShape) -> list[TensorPlan]:
    """Every tensor llama.cpp's ``llama`` architecture loads, in file order."""
    h, kv, ff = shape.hidden, shape.kv_dim, shape.intermediate
    out = [TensorPlan("token_embd.weight", (h, shape.vocab), True)]
    for i in range(shape.layers):
        b = f"blk.{i}."
        out += [
            TensorPlan(b + "attn_norm.weight", (h,), False),
            TensorPlan(b + "attn_q.weight", (h, h), True),
            TensorPlan(b + "attn_k.weight", (h, kv), True),
            TensorPlan(b + "attn_v.weight", (h, kv), True),
            TensorPlan(b + "attn_output.weight", (h, h), True),
            TensorPlan(b + "ffn_norm.weight", (h,), False),
            TensorPlan(b + "ffn_gate.weight", (h, ff), True),
            TensorPlan(b + "ffn_up.weight", (h, ff), True),
            TensorPlan(b + "ffn_down.weight", (ff, h), True),
        ]
    out += [TensorPlan("output_norm.weight", (h,), False), TensorPlan("output.weight", (h, shape.vocab), True)]
    return out


def _quant_type(quant: str) -> Any:
    import gguf

    types = {
        "q4_k": gguf.GGMLQuantizationType.Q4_K,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "f16": gguf.GGMLQuantizationType.F16,
    }
    if quant not in types:
        raise UsageError(f"unknown quantization {quant!r}; use one of {', '.join(types)}")
    return types[quant]


def random_block_pool(quant: str, pool_bytes: int = POOL_BYTES, seed: int = 0) -> np.ndarray[Any, Any]:
    """``pool_bytes`` (rounded down to whole blocks) of random blocks of ``quant`` with finite, small scales."""
    import gguf
    import numpy as np

    qtype = _quant_type(quant)
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    n_blocks = max(pool_bytes // block_bytes, 1)
    rng = np.random.default_rng(seed)
    if quant == "f16":  # plain half floats of about ±0.01
        return (
            (rng.standard_normal(n_blocks * block_bytes // 2, dtype=np.float32) * 0.01)
            .astype(np.float16)
            .view(np.uint8)
        )
    pool = np.frombuffer(rng.bytes(n_blocks * block_bytes), dtype=np.uint8).copy()
    blocks = pool.reshape(n_blocks, block_bytes)
    d = np.frombuffer(np.float16(BLOCK_D).tobytes(), dtype=np.uint8)
    blocks[:, 0:2] = d  # Q4_K, Q5_K: d then dmin (fp16); Q8_0: d (fp16) then 32 int8
    if quant == "q4_k":
        blocks[:, 2:4] = np.frombuffer(np.float16(BLOCK_DMIN).tobytes(), dtype=np.uint8)
    return pool


def tensor_nbytes(dims: tuple[int, ...], quant: str | None) -> int:
    """Bytes of a tensor of ``dims`` in ``quant`` (None: float32)."""
    import gguf

    n = 1
    for d in dims:
        n *= d
    if quant is None:
        return 4 * n
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[_quant_type(quant)]
    if dims[0] % block_elems:
        raise UsageError(f"row length {dims[0]} is not a multiple of the {quant} block ({block_elems})")
    return n // block_elems * block_bytes


def read_vocab(path: Path) -> list[tuple[str, Any, Any, Any]]:
    """The ``tokenizer.*`` keys of a GGUF as (key, value, GGUFValueType, sub type). Raises UsageError."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the vocabulary GGUF {path}: {exc}") from exc
    out = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        out.append((key, field.contents(), vtype, sub))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise UsageError(f"{path} has no tokenizer.ggml.tokens; pass a vocab GGUF such as ggml-vocab-llama-bpe.gguf")
    return out


def _tiny_vocab(n: int) -> list[tuple[str, Any, Any, Any]]:
    """A stand-in byte-level vocabulary of ``n`` tokens (tests; no ``--vocab-from``)."""
    import gguf

    tokens = [f"<tok{i}>" for i in range(n)]
    t = gguf.GGUFValueType
    return [
        ("tokenizer.ggml.model", "gpt2", t.STRING, None),
        ("tokenizer.ggml.pre", "default", t.STRING, None),
        ("tokenizer.ggml.tokens", tokens, t.ARRAY, t.STRING),
        ("tokenizer.ggml.token_type", [1] * n, t.ARRAY, t.INT32),
        ("tokenizer.ggml.merges", ["<tok1> <tok2>"], t.ARRAY, t.STRING),
        ("tokenizer.ggml.bos_token_id", 0, t.UINT32, None),
        ("tokenizer.ggml.eos_token_id", 1, t.UINT32, None),
    ]


@dataclass(frozen=True)
class GgufWritten:
    """What :func:`write_random_gguf` wrote: the path, bytes, tensor count and seconds taken."""

    path: Path
    size_bytes: int
    tensors: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "tensors": self.tensors, "seconds": self.seconds}


def write_random_gguf(
    out: Path,
    shape: LlamaShape,
    *,
    quant: str = "q4_k",
    vocab_from: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> GgufWritten:
    """Write a random-weight GGUF of ``shape`` to ``out``. The vocabulary size is the tokenizer's when
    ``vocab_from`` is given (it must match the shape's, or the shape follows it). Raises UsageError."""
    import time

    import gguf
    import numpy as np

    start = time.monotonic()
    check_quantizable(shape)
    qtype = _quant_type(quant)
    vocab = read_vocab(vocab_from) if vocab_from is not None else _tiny_vocab(shape.vocab)
    n_tokens = len(next(v for k, v, *_ in vocab if k == "tokenizer.ggml.tokens"))
    if n_tokens != shape.vocab:
        shape = dataclasses.replace(shape, vocab=n_tokens)
    plan = tensor_plan(shape)
    arch = "llama"
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(f"colo random {shape.name} {quant}")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(FILE_TYPES[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value, vtype, sub in vocab:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    if vocab_from is not None and not any(k == "tokenizer.chat_template" for k, *_ in vocab):
        writer.add_chat_template(LLAMA3_CHAT_TEMPLATE)
    sizes = []
    for t in plan:
        nbytes = tensor_nbytes(t.dims, quant if t.quantized else None)
        sizes.append(nbytes)
        raw = qtype if t.quantized else gguf.GGMLQuantizationType.F32
        writer.add_tensor_info(t.name, tuple(reversed(t.dims)), np.dtype(np.float32), nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    pool = random_block_pool(quant, seed=seed)
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    n_pool_blocks = len(pool) // block_bytes
    rng = np.random.default_rng(seed + 1)
    align = writer.data_alignment
    assert writer.fout is not None
    fout = writer.fout[0]
    for i, (t, nbytes) in enumerate(zip(plan, sizes, strict=True)):
        fout.write(b"\0" * (-fout.tell() % align))
        if not t.quantized:
            np.ones(nbytes // 4, dtype=np.float32).tofile(fout)  # norm weights: 1
            continue
        left = nbytes
        while left:
            first = int(rng.integers(0, n_pool_blocks)) * block_bytes
            take = min(left, len(pool) - first)
            fout.write(pool[first : first + take].data)
            left -= take
        if progress is not None and i % 9 == 0:
            progress(f"{t.name} ({i + 1}/{len(plan)})")
    fout.write(b"\0" * (-fout.tell() % align))
    writer.close()
    return GgufWritten(out, out.stat().st_size, len(plan), time.monotonic() - start)
