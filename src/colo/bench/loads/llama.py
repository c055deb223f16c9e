"""A compact Llama-style decoder for benchmarking one-token decode steps: static KV cache, graph-capturable.

Exactly the Llama-3.1 architecture's arithmetic for a single new token per stream (RMSNorm, rotary position
embedding, grouped-query attention reading a static KV cache, SwiGLU MLP, untied LM head, greedy argmax),
with random weights in one dtype (bf16 by default): decode speed depends on the shapes
(:mod:`colo.bench.llama_shapes`), not the values. Every tensor the step touches is allocated up front and updated in place (next token, position, cache), so
the whole step can be captured once as a CUDA graph and replayed for each token.

The KV cache is not filled from a real prompt: attention reads all ``max_len`` cached positions every step
(masked beyond the current one), i.e. the cost of the longest context, which is small next to the weights.
"""

from __future__ import annotations

from typing import Any

from colo.bench.llama_shapes import LlamaShape


class StaticLlamaDecoder:
    """Random-weight Llama decoder for ``batch_size`` streams with a static ``max_len`` KV cache.

    :meth:`step` decodes one token for every stream in place: reads ``tokens`` and ``pos``, writes the cache at
    ``pos``, leaves the greedy next tokens in ``tokens`` and advances ``pos`` by one.
    """

    def __init__(
        self,
        shape: LlamaShape,
        *,
        batch_size: int = 1,
        max_len: int = 1024,
        dtype: Any = None,
        device: str = "cuda",
        seed: int = 0,
    ) -> None:
        import torch

        self.shape = shape
        self.batch_size = batch_size
        self.max_len = max_len
        self.dtype = dtype or torch.bfloat16
        self.device = device
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        hd = shape.head_dim

        def weight(rows: int, cols: int) -> Any:
            w = torch.randn(rows, cols, dtype=self.dtype, device=device, generator=gen)
            return w.mul_(0.02)

        def ones() -> Any:
            return torch.ones(shape.hidden, dtype=self.dtype, device=device)

        self.embed = weight(shape.vocab, shape.hidden)
        self.layers: list[dict[str, Any]] = []
        for _ in range(shape.layers):
            wqkv = weight((shape.heads + 2 * shape.kv_heads) * hd, shape.hidden)
            # Attention's 1/sqrt(head_dim) folded into the query rows: exact, since RoPE is linear.
            wqkv[: shape.heads * hd].mul_(hd**-0.5)
            self.layers.append(
                {
                    "attn_norm": ones(),
                    "wqkv": wqkv,
                    "wo": weight(shape.hidden, shape.heads * hd),
                    "mlp_norm": ones(),
                    "w_gate_up": weight(2 * shape.intermediate, shape.hidden),
                    "w_down": weight(shape.hidden, shape.intermediate),
                    "k_cache": torch.zeros(batch_size, shape.kv_heads, max_len, hd, dtype=self.dtype, device=device),
                    "v_cache": torch.zeros(batch_size, shape.kv_heads, max_len, hd, dtype=self.dtype, device=device),
                }
            )
        self.final_norm = ones()
        self.lm_head = weight(shape.vocab, shape.hidden)
        self.tokens = torch.randint(0, shape.vocab, (batch_size,), device=device, generator=gen)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = torch.arange(max_len, device=device)
        self.zeros = torch.zeros(max_len, dtype=self.dtype, device=device)
        inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        freqs = torch.outer(torch.arange(max_len, device=device, dtype=torch.float32), inv_freq)
        # Llama's rotate-half layout: the same angle for dims i and i + hd/2.
        self.cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1).to(self.dtype)  # [L, hd]
        self.sin = torch.cat((freqs.sin(), freqs.sin()), dim=-1).to(self.dtype)

    def reset(self, position: int = 0) -> None:
        """Set the position (outside a graph); the cache keeps its contents."""
        self.pos.fill_(position)

    def step(self) -> Any:
        """Decode one token per stream (in place); returns the ``tokens`` tensor.

        About 20 kernels per layer (RMSNorm fused, residual adds fused into the output GEMMs, RoPE on queries
        and keys at once), so launch gaps stay small next to reading the weights.
        """
        import torch
        import torch.nn.functional as F

        s = self.shape
        b, hd, group = self.batch_size, s.head_dim, s.heads // s.kv_heads
        norm_shape = (s.hidden,)
        n_qk = s.heads + s.kv_heads
        half = hd // 2
        x = F.embedding(self.tokens, self.embed)  # [B, H]
        cos = self.cos.index_select(0, self.pos)  # [1, hd]
        sin = self.sin.index_select(0, self.pos)
        bias = self.zeros.masked_fill(self.positions > self.pos, float("-inf"))  # [L]: hide future positions
        for layer in self.layers:
            h = F.rms_norm(x, norm_shape, layer["attn_norm"], s.rms_eps)
            qkv = F.linear(h, layer["wqkv"])  # [B, (heads + 2 kv) hd]
            qk = qkv[:, : n_qk * hd].view(b, n_qk, hd)
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = torch.addcmul(qk * cos, rotated, sin)  # RoPE on queries and keys together
            v = qkv[:, n_qk * hd :].view(b, s.kv_heads, 1, hd)
            layer["k_cache"].index_copy_(2, self.pos, qk[:, s.heads :].unsqueeze(2))
            layer["v_cache"].index_copy_(2, self.pos, v)
            q = qk[:, : s.heads].reshape(b, s.kv_heads, group, hd)  # grouped: no KV repeat
            scores = torch.matmul(q, layer["k_cache"].transpose(-1, -2)) + bias  # [B, kv, group, L]
            probs = torch.softmax(scores, dim=-1)
            attn = torch.matmul(probs, layer["v_cache"]).reshape(b, s.heads * hd)
            x = torch.addmm(x, attn, layer["wo"].t())
            h = F.rms_norm(x, norm_shape, layer["mlp_norm"], s.rms_eps)
            gate, up = F.linear(h, layer["w_gate_up"]).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate) * up, layer["w_down"].t())
        logits = F.linear(F.rms_norm(x, norm_shape, self.final_norm, s.rms_eps), self.lm_head)
        self.tokens.copy_(logits.argmax(dim=-1))
        self.pos.add_(1)
        return self.tokens
