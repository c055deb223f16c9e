"""The offline estimator: formulas on hand-made shapes, weights from meta builds, and activations checked
against the tensors a real (CPU) forward pass keeps alive."""

from __future__ import annotations

import json
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from colo import units
from colo.memory import estimate as est
from colo.memory.estimate import ModelShape
from colo.memory.worst_case import WorstCase

MIB = units.MIB


# The toy encoder, in the form catalog/shapes.json stores a shape; tests override single fields.
TOY: dict[str, Any] = {
    "model_id": "toy",
    "task": "encoder",
    "model_type": "bert",
    "params": 1_000_000,
    "weights_fp32_bytes": 4_000_000,
    "float_elements": 1_000_000,
    "other_buffer_bytes": 4096,
    "hidden": 256,
    "layers": 4,
    "decoder_layers": 4,
    "heads": 4,
    "kv_heads": 4,
    "head_dim": 64,
    "intermediate": 1024,
    "vocab": 1000,
    "gated": False,
    "attention": "sdpa",
    "relative_bias": False,
}


def _shape(**kw: Any) -> ModelShape:
    return ModelShape(**{**TOY, **kw})


def test_weights_scale_with_dtype_but_integer_buffers_do_not() -> None:
    s = _shape()
    assert s.weights_bytes("float32") == 4_000_000 + 4096
    assert s.weights_bytes("float16") == 2_000_000 + 4096
    assert s.weights_bytes("bfloat16") == 2_000_000 + 4096


def test_encoder_with_fused_attention_is_bounded_by_the_feed_forward() -> None:
    s = _shape()
    w = WorstCase("toy", "float32", batch_size=8, seq_len=128)
    e = est.estimate_shape(s, w, overhead_bytes=0)
    tokens = 8 * 128
    ffn = 2 * tokens * 256 * 4 + 2 * tokens * 1024 * 4
    assert e.activation_bytes == ffn + tokens * 256 * 4
    assert e.kv_cache_bytes == 0
    assert e.label == "estimate"


def test_eager_attention_adds_two_score_matrices_and_relative_bias_one_more() -> None:
    w = WorstCase("toy", "float32", batch_size=8, seq_len=512)
    fused = est.estimate_shape(_shape(), w, overhead_bytes=0).activation_bytes
    eager = est.estimate_shape(_shape(attention="eager"), w, overhead_bytes=0).activation_bytes
    biased = est.estimate_shape(_shape(attention="eager", relative_bias=True), w, overhead_bytes=0)
    scores = 8 * 4 * 512 * 512 * 4
    assert eager > fused
    assert eager >= 2 * scores
    assert biased.activation_bytes - eager == scores
    assert any("eager" in n for n in biased.notes)


def test_generator_kv_cache_uses_kv_heads() -> None:
    llama_like = _shape(task="generator", hidden=4096, layers=32, intermediate=14336, gated=True, vocab=128256)
    llama_like = replace(llama_like, heads=32, kv_heads=8, head_dim=128)  # grouped-query attention: 8 KV heads
    w = WorstCase("toy", "bfloat16", batch_size=1, seq_len=1000, new_tokens=24)
    e = est.estimate_shape(llama_like, w, overhead_bytes=0)
    assert e.kv_cache_bytes == 2 * 32 * 1 * 1024 * 8 * 128 * 2  # 128 MiB at 1,024 tokens
    assert e.kv_cache_bytes == 128 * MIB
    assert e.new_tokens == 24


def test_seq2seq_counts_self_and_cross_attention_caches() -> None:
    t5_like = _shape(task="seq2seq", model_type="t5", relative_bias=True, gated=True, decoder_layers=6)
    w = WorstCase("toy", "float32", batch_size=4, seq_len=64, new_tokens=16)
    e = est.estimate_shape(t5_like, w, overhead_bytes=0)
    per_token = 2 * 6 * 4 * 4 * 64 * 4  # 2 × layers × batch × heads × head_dim × bytes
    assert e.kv_cache_bytes == per_token * (16 + 64)


def test_reserved_rounds_up_and_nvml_adds_the_overhead() -> None:
    assert est.reserved_for(0) == est.ALLOCATOR_FLOOR_BYTES
    r = est.reserved_for(100 * MIB)
    assert r % (2 * MIB) == 0 and r >= 105 * MIB
    e = est.estimate_shape(_shape(), WorstCase("toy"), overhead_bytes=600 * MIB, overhead_source="test")
    assert e.nvml_peak_bytes == e.reserved_bytes + 600 * MIB
    assert e.reserved_bytes >= e.weights_bytes + e.activation_bytes


def test_bad_dtype() -> None:
    from colo.errors import ProfileError

    with pytest.raises(ProfileError):
        est.estimate_shape(_shape(), WorstCase("toy", dtype="int8"))


def test_estimate_real_catalog_model_weights_match_parameter_bytes() -> None:
    e = est.estimate(WorstCase("roberta-base", "float32", 32, 512))
    # 124.65 M parameters × 4 bytes, plus the position-id buffers
    assert e.weights_bytes == pytest.approx(124.65e6 * 4, rel=0.002)
    half = est.estimate(WorstCase("roberta-base", "float16", 32, 512))
    assert half.weights_bytes == pytest.approx(e.weights_bytes / 2, rel=0.01)
    assert e.overhead_bytes == est.DEFAULT_OVERHEAD_BYTES
    assert e.nvml_peak_bytes > e.weights_bytes + est.DEFAULT_OVERHEAD_BYTES


def test_tied_embeddings_count_once() -> None:
    gpt = est.model_shape("distilgpt2")
    assert gpt.params == pytest.approx(81.91e6, rel=0.002)  # lm_head shares wte


def test_estimate_set_counts_one_overhead_and_the_largest_transient() -> None:
    a = WorstCase("google/bert_uncased_L-2_H-128_A-2", "float32", 32, 512)
    b = WorstCase("sentence-transformers/all-MiniLM-L6-v2", "float32", 32, 512)
    ea, eb = est.estimate(a), est.estimate(b)
    together = est.estimate_set([a, b])
    assert together < ea.nvml_peak_bytes + eb.nvml_peak_bytes
    assert together >= est.DEFAULT_OVERHEAD_BYTES + ea.weights_bytes + eb.weights_bytes + max(
        ea.activation_bytes, eb.activation_bytes
    )
    assert est.estimate_set([]) == 0


class _LiveBytes:
    """Peak bytes of tensors created during a forward pass, tracked through torch's dispatcher."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.ptrs: dict[int, int] = {}

    def mode(self) -> Any:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_map_only

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                tree_map_only(torch.Tensor, tracker.add, out)
                return out

        return Mode()

    def _free(self, ptr: int, n: int) -> None:
        if self.ptrs.pop(ptr, None) is not None:
            self.live -= n

    def add(self, t: Any) -> None:
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if n == 0 or ptr in self.ptrs:
            return
        self.ptrs[ptr] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._free, ptr, n)


@pytest.mark.parametrize(
    ("model_id", "attn"),
    [("sentence-transformers/all-MiniLM-L6-v2", "sdpa"), ("sentence-transformers/all-mpnet-base-v2", "eager")],
)
def test_activation_formula_matches_tensors_alive_in_a_real_forward(model_id: str, attn: str, tmp_path: Path) -> None:
    from colo.memory import build, catalog

    # The catalog architecture, narrowed to 2 layers so the CPU run takes a moment; same code paths.
    cfg = catalog.arch_config(model_id) | {"num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    built = build.build(model_id, path=str(tmp_path), random_weights=True)
    batch, seq = 4, 128
    tracker = _LiveBytes()
    with tracker.mode():
        build.run_worst_case(built, batch, seq, 0)
    shape = est.model_shape(model_id, str(tmp_path))
    assert shape.attention == attn and shape.layers == 2
    predicted = est.estimate_shape(shape, WorstCase(model_id, "float32", batch, seq)).activation_bytes
    assert predicted == pytest.approx(tracker.peak, rel=0.2)


def test_model_shape_is_cached() -> None:
    assert est.model_shape("roberta-base") is est.model_shape("roberta-base")
    assert replace(est.model_shape("roberta-base"), hidden=1).hidden == 1


def test_allocator_footprint_of_fused_attention_counts_each_block_size() -> None:
    s = _shape()  # H = 256, I = 1024
    w = WorstCase("toy", "float32", batch_size=32, seq_len=512)
    e = est.estimate_shape(s, w, overhead_bytes=0)
    th, ti = 32 * 512 * 256 * 4, 32 * 512 * 1024 * 4
    assert e.activation_reserved_bytes == 6 * th + 2 * ti  # separate segments per size, reused per layer
    assert e.activation_reserved_bytes > e.activation_bytes


def test_feed_forward_blocks_fit_into_freed_score_matrices() -> None:
    s = _shape(attention="eager", heads=16)  # S = 32 × 16 × 512² × 4 = 512 MiB > T·I = 64 MiB
    w = WorstCase("toy", "float32", batch_size=32, seq_len=512)
    e = est.estimate_shape(s, w, overhead_bytes=0)
    th, scores, mask = 32 * 512 * 256 * 4, 32 * 16 * 512 * 512 * 4, 32 * 512 * 512 * 4
    assert e.activation_reserved_bytes == max(e.activation_bytes, 6 * th + 2 * scores + mask)


def test_weight_segments_of_a_real_model() -> None:
    shape = est.model_shape("roberta-base")
    weights = shape.weights_bytes("float32")
    segments = shape.weights_reserved_bytes("float32")
    assert weights < segments < weights * 1.15
    assert len(shape.tensors) > 190  # every parameter and buffer, in creation order
