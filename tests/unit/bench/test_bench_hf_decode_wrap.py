"""The transformers static-cache decode rewinds its cache when a request would run past max_len.

Regression: transformers 5.x static layers keep their own write position and ignore ``cache_position``;
without rewinding it, the cache overflowed after max_len tokens (a device-side assert on the H100).
"""

from __future__ import annotations

from colo.bench.loads.hf_decode import HfDecodeWorkload


def test_decode_wraps_many_times_without_overflow() -> None:
    w = HfDecodeWorkload(model="distilgpt2", device="cpu", max_len=40, tokens_per_request=8, start_pos=4)
    try:
        w.prepare()
        for _ in range(12):  # 96 tokens through a 40-position cache
            assert w.request().items == 8.0
    finally:
        w.close()
