"""The caching-allocator model the estimator uses for weights and KV caches."""

from __future__ import annotations

import pytest

from colo import units
from colo.memory.allocator import CachingAllocator, kv_cache_footprint, segment_footprint

MIB, KIB = units.MIB, 1024


def test_segment_sizes_follow_the_allocator_constants() -> None:
    assert segment_footprint([]) == 0
    assert segment_footprint([KIB] * 100) == 2 * MIB  # small pool: one 2 MiB segment
    assert segment_footprint([KIB] * 3000) == 2 * 2 * MIB  # 3,000 × 1 KiB spill into a second one
    assert segment_footprint([9 * MIB] * 3) == 40 * MIB  # two 9 MiB blocks per 20 MiB segment
    assert segment_footprint([31 * MIB]) == 32 * MIB  # own segment, rounded to 2 MiB
    # a 10.5 MiB tensor takes the 11 MiB left over in a 20 MiB segment (best fit)
    assert segment_footprint([9 * MIB, 21 * MIB // 2]) == 20 * MIB


def test_freed_blocks_are_reused_and_merged_but_segments_are_kept() -> None:
    a = CachingAllocator()
    h1 = a.alloc(50 * MIB)
    a.free(h1)
    a.alloc(40 * MIB)  # fits the freed 50 MiB segment
    assert a.reserved_bytes == 50 * MIB
    h3 = a.alloc(60 * MIB)  # larger than anything free: a new segment
    assert a.reserved_bytes == 110 * MIB
    a.free(h3)
    assert a.reserved_bytes == 110 * MIB  # never returned
    b = CachingAllocator()
    x, y = b.alloc(4 * MIB), b.alloc(4 * MIB)  # both in one 20 MiB segment
    b.free(x)
    b.free(y)
    b.alloc(18 * MIB)  # the merged free space of that segment holds it
    assert b.reserved_bytes == 20 * MIB
    assert b.peak_allocated_bytes == 18 * MIB
    with pytest.raises(KeyError):
        b.free(x)


def test_growing_kv_cache_needs_more_than_its_final_size() -> None:
    per_token = 32 * 12 * 64 * 4  # distilgpt2 keys of one layer at batch 32, fp32
    final = 2 * 6 * per_token * 128
    footprint = kv_cache_footprint(6, per_token, 64, 64)
    assert final < footprint < 2 * final
    # nothing generated: the prompt's cache only
    assert kv_cache_footprint(1, MIB * 20 // 64, 64, 0) == 2 * 20 * MIB


def test_long_generations_are_simulated_in_strides() -> None:
    per_token = 8 * 128 * 2  # Llama-3-8B-shaped, batch 1, bf16
    footprint = kv_cache_footprint(32, per_token, 4096, 4096)
    assert footprint >= 2 * 32 * per_token * 8192
