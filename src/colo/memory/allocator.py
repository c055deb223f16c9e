"""A model of PyTorch's CUDA caching allocator: how many bytes of ``cudaMalloc`` segments a sequence of
allocations and frees leaves reserved (``torch.cuda.memory_reserved``), without a GPU.

The rules and constants are those of ``c10/cuda/CUDACachingAllocator.cpp`` (default settings: no
``expandable_segments``, no ``max_split_size``):

- a request is rounded up to 512 bytes;
- requests up to 1 MiB come from the small pool, in 2 MiB segments; larger ones from the large pool, in
  20 MiB segments when under 10 MiB, else in a segment of their own size rounded up to 2 MiB;
- a request takes the smallest free block that fits (best fit) in its pool, else a new segment;
- the rest of a block is split off as a free block when it is at least 512 bytes (small pool) or more than
  1 MiB (large pool);
- a freed block merges with free neighbours in its segment; segments are never returned (no
  ``empty_cache``) and never merged with each other.

Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from colo import units

BLOCK_ROUND_BYTES = 512
SMALL_REQUEST_BYTES = units.MIB  # up to this: the small pool
SMALL_SEGMENT_BYTES = 2 * units.MIB
LARGE_SEGMENT_BYTES = 20 * units.MIB  # requests of 1–10 MiB share these
MIN_LARGE_ALLOC_BYTES = 10 * units.MIB  # from here on: a segment per request, rounded to 2 MiB
LARGE_ROUND_BYTES = 2 * units.MIB


@dataclass
class _Block:
    segment: int
    offset: int
    size: int
    free: bool
    small: bool


class CachingAllocator:
    """Allocate and free by handle; ``reserved_bytes`` is what the segments add up to."""

    def __init__(self) -> None:
        self.reserved_bytes = 0
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0
        self._segments: list[list[_Block]] = []
        self._live: dict[int, _Block] = {}
        self._next = 0

    def alloc(self, nbytes: int) -> int:
        """Allocate ``nbytes``; returns a handle for :meth:`free`."""
        size = units.round_up(max(nbytes, 1), BLOCK_ROUND_BYTES)
        small = size <= SMALL_REQUEST_BYTES
        best: _Block | None = None
        for seg in self._segments:
            for b in seg:
                if b.free and b.small == small and b.size >= size and (best is None or b.size < best.size):
                    best = b
        if best is None:
            if small:
                seg_size = SMALL_SEGMENT_BYTES
            elif size < MIN_LARGE_ALLOC_BYTES:
                seg_size = LARGE_SEGMENT_BYTES
            else:
                seg_size = units.round_up(size, LARGE_ROUND_BYTES)
            best = _Block(len(self._segments), 0, seg_size, True, small)
            self._segments.append([best])
            self.reserved_bytes += seg_size
        rest = best.size - size
        if rest >= BLOCK_ROUND_BYTES if small else rest > SMALL_REQUEST_BYTES:
            seg = self._segments[best.segment]
            tail = _Block(best.segment, best.offset + size, rest, True, small)
            seg.insert(seg.index(best) + 1, tail)
            best.size = size
        best.free = False
        self._next += 1
        self._live[self._next] = best
        self.allocated_bytes += best.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return self._next

    def free(self, handle: int) -> None:
        """Free the block of ``handle`` and merge it with free neighbours. KeyError for an unknown handle."""
        block = self._live.pop(handle)
        self.allocated_bytes -= block.size
        block.free = True
        seg = self._segments[block.segment]
        i = seg.index(block)
        if i + 1 < len(seg) and seg[i + 1].free:
            block.size += seg.pop(i + 1).size
        if i > 0 and seg[i - 1].free:
            seg[i - 1].size += block.size
            seg.pop(i)


def segment_footprint(sizes: list[int]) -> int:
    """Reserved bytes after allocating ``sizes`` in order and freeing nothing (a model's weights)."""
    sim = CachingAllocator()
    for size in sizes:
        if size > 0:
            sim.alloc(size)
    return sim.reserved_bytes


# A long generation is simulated in strides so the model stays fast (at most this many allocations).
MAX_SIMULATED_ALLOCS = 20_000


def kv_cache_footprint(
    layers: int, bytes_per_token: int, prompt_tokens: int, new_tokens: int, *, fixed_bytes: int = 0
) -> int:
    """Reserved bytes of a KV cache that grows by concatenation: per layer a key and a value tensor of
    ``bytes_per_token × tokens``, re-allocated (new, then the old one freed) for every generated token, as
    ``DynamicCache`` does. ``fixed_bytes`` per layer and tensor (e.g. seq2seq cross-attention over the input)
    are allocated once up front."""
    sim = CachingAllocator()
    for _ in range(layers * 2 if fixed_bytes else 0):
        sim.alloc(fixed_bytes)
    start = max(prompt_tokens, 1)
    live = [sim.alloc(bytes_per_token * start) for _ in range(layers * 2)]
    stride = max(1, -(-(new_tokens * layers * 2) // MAX_SIMULATED_ALLOCS))
    tokens = start
    while tokens < prompt_tokens + new_tokens:
        tokens = min(tokens + stride, prompt_tokens + new_tokens)
        for i in range(len(live)):
            handle = sim.alloc(bytes_per_token * tokens)
            sim.free(live[i])
            live[i] = handle
    return sim.reserved_bytes
