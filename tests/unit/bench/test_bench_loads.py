"""Built-in workloads on CPU: the Llama decode step against a naive full forward, the command parser, the
CPU paths of encoder / decode workloads."""

from __future__ import annotations

import sys

import pytest

from colo.bench.llama_shapes import SHAPES, LlamaShape, shape_named
from colo.bench.loads import make_workload
from colo.bench.loads.cmd import CommandWorkload, parse_throughput
from colo.bench.loads.llama import StaticLlamaDecoder
from colo.errors import UsageError

torch = pytest.importorskip("torch")


def _naive_next_tokens(dec: StaticLlamaDecoder, tokens: list[int]) -> list[int]:
    """Full causal forward over ``tokens`` (no cache, KV heads repeated): greedy next token per position."""
    import torch.nn.functional as F

    s = dec.shape
    hd, group, n = s.head_dim, s.heads // s.kv_heads, len(tokens)
    x = dec.embed[torch.tensor(tokens)]  # [T, H]
    inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)  # [T, hd/2]
    cos, sin = angles.cos(), angles.sin()

    def rope(t: torch.Tensor) -> torch.Tensor:  # [T, heads, hd], Llama's rotate-half pairs (i, i + hd/2)
        half = hd // 2
        c, s_ = cos[:, None, :], sin[:, None, :]
        return torch.cat((t[..., :half] * c - t[..., half:] * s_, t[..., half:] * c + t[..., :half] * s_), -1)

    def rms(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + s.rms_eps) * w

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer in dec.layers:
        h = rms(x, layer["attn_norm"])
        q, k, v = F.linear(h, layer["wqkv"]).split((s.heads * hd, s.kv_heads * hd, s.kv_heads * hd), -1)
        q = rope(q.view(n, s.heads, hd))
        k = rope(k.view(n, s.kv_heads, hd)).repeat_interleave(group, dim=1)
        v = v.view(n, s.kv_heads, hd).repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k)  # the decoder folds 1/sqrt(hd) into its query weights
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        attn = torch.einsum("hqk,khd->qhd", probs, v).reshape(n, s.heads * hd)
        x = x + F.linear(attn, layer["wo"])
        gate, up = F.linear(rms(x, layer["mlp_norm"]), layer["w_gate_up"]).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, layer["w_down"])
    logits = F.linear(rms(x, dec.final_norm), dec.lm_head)
    return [int(t) for t in logits.argmax(-1)]


def test_static_cache_decode_matches_a_full_forward() -> None:
    shape = LlamaShape(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=48, vocab=64)
    dec = StaticLlamaDecoder(shape, batch_size=1, max_len=16, dtype=torch.float32, device="cpu", seed=3)
    # Larger weights than the benchmark's 0.02 so the argmax depends on context, not just the last token.
    for layer in dec.layers:
        for key in ("wqkv", "wo", "w_gate_up", "w_down"):
            layer[key].mul_(10)
    prompt = [5, 17, 42, 8, 33, 60]
    expected = _naive_next_tokens(dec, prompt)
    dec.reset(0)
    got = []
    with torch.no_grad():
        for tok in prompt:
            dec.tokens.fill_(tok)
            got.append(int(dec.step()[0]))
    assert got == expected
    assert int(dec.pos[0]) == len(prompt)
    # the cache holds the prompt's keys and nothing past it
    assert bool(dec.layers[0]["k_cache"][0, :, : len(prompt)].abs().sum() > 0)
    assert bool(dec.layers[0]["k_cache"][0, :, len(prompt) :].abs().sum() == 0)


def test_batched_streams_decode_independently() -> None:
    shape = SHAPES["tiny"]
    dec = StaticLlamaDecoder(shape, batch_size=2, max_len=8, dtype=torch.float32, device="cpu")
    dec.tokens.copy_(torch.tensor([3, 3]))
    with torch.no_grad():
        out = dec.step().clone()
    assert out[0] == out[1]  # same input, same position: same next token


def test_llama_8b_shape_is_the_real_one() -> None:
    s = shape_named("llama-3.1-8b")
    assert (s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate, s.vocab) == (4096, 32, 32, 8, 14336, 128256)
    assert s.param_count() == 8_030_261_248  # Llama-3.1-8B's parameter count
    assert 15.0e9 < s.bytes_read_per_step(2, 1, 1024) < 15.3e9
    with pytest.raises(UsageError, match="unknown Llama shape 'llama-70b-ish'; use one of llama-3.1-8b"):
        shape_named("llama-70b-ish")
    with pytest.raises(UsageError, match="must divide evenly"):
        shape_named("tiny", heads=3)
    assert shape_named("tiny", layers=0) == SHAPES["tiny"]  # 0: keep the shape's own value
    assert shape_named("tiny", layers=1).layers == 1
    with pytest.raises(ValueError):
        LlamaShape(hidden=30, layers=1, heads=4, kv_heads=2, intermediate=8, vocab=8)


def test_decode_workload_on_cpu_counts_tokens_and_wraps() -> None:
    w = make_workload(
        "decode",
        {
            "shape": "tiny",
            "batch_size": 2,
            "tokens_per_request": 4,
            "max_len": 16,
            "start_pos": 2,
            "dtype": "float32",
            "device": "cpu",
        },
    )
    info = w.prepare()
    assert info["cuda_graphs"] is False and info["param_count"] == SHAPES["tiny"].param_count()
    for _ in range(5):  # 2 + 4×(1+5) > 16: wraps around the static cache without error
        assert w.request().items == 8.0
    w.close()


def test_parse_throughput() -> None:
    assert parse_throughput("warming up\nthroughput: 812.5 tok/s\n") == (812.5, "tok")
    assert parse_throughput("1 it/s then 1234 it/s") == (1234.0, "it")
    assert parse_throughput("rate=3.2e3 samples/sec") == (3200.0, "samples")
    assert parse_throughput("nothing here") is None
    assert parse_throughput("qps 55", r"qps (\d+)") == (55.0, "item")
    assert parse_throughput("x=7 y", r"x=(?P<value>\d+)") == (7.0, "item")
    with pytest.raises(ValueError, match="does not compile"):
        parse_throughput("", "(")


def test_command_workload_runs_and_parses() -> None:
    w = CommandWorkload([sys.executable, "-c", "print('done: 42.5 tok/s')"])
    assert w.prepare()["command"][0] == sys.executable
    out = w.request()
    assert out.extra == {"reported_per_sec": 42.5} and w.unit == "tok"
    with pytest.raises(RuntimeError, match="no throughput line"):
        CommandWorkload([sys.executable, "-c", "print('hello')"]).request()
    with pytest.raises(RuntimeError, match="exited with status 3"):
        CommandWorkload([sys.executable, "-c", "import sys; sys.exit(3)"]).request()
    with pytest.raises(RuntimeError, match="command not found"):
        CommandWorkload(["/no/such/binary-colo"]).request()
    with pytest.raises(ValueError):
        CommandWorkload("")


def test_make_workload_rejects_unknowns() -> None:
    with pytest.raises(UsageError, match="bad parameters"):
        make_workload("cpu", {"bogus": 1})
    with pytest.raises(UsageError, match="unknown workload"):
        make_workload("quantum", {})
    with pytest.raises(ValueError):
        make_workload("encoder", {})


def test_encoder_workload_on_cpu_with_a_catalog_model() -> None:
    w = make_workload(
        "encoder", {"model": "google/bert_uncased_L-2_H-128_A-2", "batch_size": 2, "seq_len": 8, "device": "cpu"}
    )
    info = w.prepare()
    assert info["cuda_graphs"] is False and info["dtype"] == "float32"  # CPU runs float32, eagerly
    assert w.request().items == 2.0
    w.close()
