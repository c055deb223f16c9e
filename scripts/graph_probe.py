"""How much of a small encoder's forward is launch overhead: eager against a CUDA-graph replay (issue 22's lone
request), on the GPU at hand. A probe for the next step, not part of colo: it prints, it asserts nothing.

    python3 scripts/graph_probe.py [--iters 300]

For bert-tiny (2 layers, hidden 128) and a MiniLM-L6-shaped BertModel (6 layers, hidden 384), random weights,
float16, shapes 1 × 16 and 8 × 128: the mean milliseconds of (a) an eager forward followed by a synchronize, (b)
the same forward captured once in a CUDA graph (static input tensors, no attention mask: unpadded rows) and
replayed, followed by a synchronize; and the memory the capture's private pool took. One line per point:
``GRAPH model=... shape=BxS eager_ms=... graph_ms=... speedup=...x pool_mib=...`` (or ``capture_failed=...``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertModel

SHAPES = {
    "bert-tiny": BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "minilm-l6": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def timed(fn: Callable[[], object], iters: int) -> float:
    """Mean milliseconds of ``fn()`` then a synchronize, after 20 untimed calls."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / iters


def probe(name: str, config: BertConfig, batch: int, seq: int, iters: int) -> str:
    model = BertModel(config).to("cuda", torch.float16).eval()
    ids = torch.randint(1000, 2000, (batch, seq), device="cuda")
    with torch.inference_mode():
        eager = timed(lambda: model(input_ids=ids).last_hidden_state.mean(dim=1), iters)
        before = torch.cuda.memory_reserved()
        try:
            static_ids = ids.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(input_ids=static_ids)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model(input_ids=static_ids).last_hidden_state.mean(dim=1)
            replay = timed(graph.replay, iters)
            ok = torch.allclose(out, model(input_ids=static_ids).last_hidden_state.mean(dim=1), atol=1e-2)
        except Exception as exc:  # a probe: say what failed and go on
            return f"GRAPH model={name} shape={batch}x{seq} eager_ms={eager:.3f} capture_failed={type(exc).__name__}: {str(exc)[:200]}"
        pool = (torch.cuda.memory_reserved() - before) / 2**20
    return (
        f"GRAPH model={name} shape={batch}x{seq} eager_ms={eager:.3f} graph_ms={replay:.3f} "
        f"speedup={eager / replay:.1f}x pool_mib={pool:.0f} same_answer={ok}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_probe: no CUDA device here", file=sys.stderr)
        return 2
    print(f"GRAPH device={torch.cuda.get_device_name(0)} torch={torch.__version__}")
    for name, config in SHAPES.items():
        for batch, seq in ((1, 16), (8, 128)):
            print(probe(name, config, batch, seq, args.iters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
