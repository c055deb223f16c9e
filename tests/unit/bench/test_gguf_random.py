"""The random-weight GGUF generator: a tiny Llama shape read back with gguf-py's reader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.bench.gguf_random import check_quantizable, tensor_nbytes, tensor_plan, write_random_gguf
from colo.bench.llama_shapes import SHAPES, LlamaShape, shape_named
from colo.cli.main import app
from colo.errors import UsageError

gguf = pytest.importorskip("gguf")


def _vocab_file(path: Path, n: int) -> Path:
    """A vocab-only GGUF like llama.cpp's ggml-vocab-*.gguf (tokenizer keys, no tensors)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list([f"t{i}" for i in range(n)])
    w.add_token_types([1] * n)
    w.add_token_merges(["t1 t2", "t3 t4"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def test_tiny_shape_reads_back_with_names_shapes_types_and_tokenizer(tmp_path: Path) -> None:
    vocab = _vocab_file(tmp_path / "vocab.gguf", 768)
    out = tmp_path / "m.gguf"
    done = write_random_gguf(out, shape_named("tiny"), vocab_from=vocab)
    reader = gguf.GGUFReader(str(out))
    shape = shape_named("tiny", vocab=768)
    plan = tensor_plan(shape)
    assert done.tensors == len(plan) == 2 + 9 * 2 + 1
    by_name = {t.name: t for t in reader.tensors}
    for t in plan:
        got = by_name[t.name]
        assert tuple(int(x) for x in got.shape) == t.dims
        want = gguf.GGMLQuantizationType.Q4_K if t.quantized else gguf.GGMLQuantizationType.F32
        assert got.tensor_type == want
        assert got.n_bytes == tensor_nbytes(t.dims, "q4_k" if t.quantized else None)
    f = reader.fields
    assert f["general.architecture"].contents() == "llama"
    assert f["llama.block_count"].contents() == 2
    assert f["llama.embedding_length"].contents() == 256
    assert f["llama.attention.head_count_kv"].contents() == 2
    assert f["llama.rope.freq_base"].contents() == 500000.0
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "llama-bpe"
    assert len(f["tokenizer.ggml.tokens"].contents()) == 768
    assert f["tokenizer.ggml.merges"].contents() == ["t1 t2", "t3 t4"]
    assert "<|start_header_id|>" in f["tokenizer.chat_template"].contents()
    # Every quantized block has finite, small scales: dequantized weights are finite and about ±0.01.
    from gguf.quants import dequantize

    emb = by_name["token_embd.weight"]
    values = dequantize(emb.data, emb.tensor_type)
    assert values.shape == (768, 256)
    assert all(math.isfinite(float(v)) for v in (values.min(), values.max()))
    assert 0.001 < float(values.std()) < 0.05
    norm = by_name["blk.0.attn_norm.weight"]
    assert float(norm.data.min()) == float(norm.data.max()) == 1.0


def test_the_8b_shape_is_llama_3_1_8b_at_about_4_6_gib() -> None:
    s = SHAPES["llama-3.1-8b"]
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.intermediate, s.vocab) == (32, 4096, 32, 8, 14336, 128256)
    total = sum(tensor_nbytes(t.dims, "q4_k" if t.quantized else None) for t in tensor_plan(s))
    assert 4.4e9 < total < 5.0e9


def test_bad_shapes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown Llama shape"):
        shape_named("llama-9")
    with pytest.raises(UsageError, match="hidden 320 is not a multiple of 256"):
        check_quantizable(shape_named("tiny", hidden=320))
    with pytest.raises(UsageError, match="intermediate 96 is not a multiple of 256"):
        write_random_gguf(Path("never-written.gguf"), LlamaShape(256, 1, 4, 2, 96, 64))


def test_make_gguf_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    result = CliRunner().invoke(
        app, ["bench", "make-gguf", "--shape", "tiny", "--layers", "1", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert len(gguf.GGUFReader(str(out)).tensors) == 2 + 9 + 1
    bad = CliRunner().invoke(app, ["bench", "make-gguf", "--shape", "nope", "--out", str(out)])
    assert bad.exit_code == 2
