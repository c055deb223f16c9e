"""Where a lone request's ``to_device`` phase goes on a GPU (issue 22): padding on the host, pinning, the copy
and the wait, each timed alone, against the alternatives (a pageable copy, a pinned buffer kept across
batches). A probe for the GPU machine: it prints, it asserts nothing.

    python3 scripts/probe_to_device.py [--device cuda] [--reps 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def timed_us(fn: Callable[[], object], reps: int) -> float:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    import numpy as np
    import torch

    from colo.modelserver.cuda_graphs import use_own_stream
    from colo.modelserver.inference import pad_batch, synchronize

    dev = args.device
    use_own_stream(dev)
    torch.zeros(1, device=dev)
    for rows, width in ((1, 16), (8, 128)):
        ids = [[1000 + (r * 7 + c) % 900 for c in range(width)] for r in range(rows)]

        def host() -> object:
            both = np.zeros((2, rows, width), dtype=np.int64)
            both[0].fill(0)
            for i, row in enumerate(ids):
                both[0, i, :width] = row
                both[1, i, :width] = 1
            return torch.from_numpy(both)

        made = host()
        assert isinstance(made, torch.Tensor)
        keep = torch.empty_like(made).pin_memory()

        def current() -> None:
            pad_batch(ids, 0, left=False, device=dev)
            synchronize(dev)

        def pageable() -> None:
            h = host()
            assert isinstance(h, torch.Tensor)
            h.to(dev)
            synchronize(dev)

        def kept_pinned() -> None:
            h = host()
            assert isinstance(h, torch.Tensor)
            keep.copy_(h)
            keep.to(dev, non_blocking=True)
            synchronize(dev)

        figures = {
            "host_only": timed_us(host, args.reps),
            "pin_only": timed_us(lambda: made.pin_memory(), args.reps),
            "sync_idle": timed_us(lambda: synchronize(dev), args.reps),
            "event_sync_idle": timed_us(lambda: synchronize(dev, block=True), args.reps),
            "current": timed_us(current, args.reps),
            "pageable": timed_us(pageable, args.reps),
            "kept_pinned": timed_us(kept_pinned, args.reps),
        }
        print(f"PROBE to_device {rows}x{width} " + " ".join(f"{k}={v:.1f}us" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
