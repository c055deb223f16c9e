"""A :class:`colo.modelserver.graphs.GraphBackend` without CUDA, for tests of the graph policy and of the batch
path that uses it.

A "capture" runs the module once (as a warm-up would) and keeps that output as the static output; a "replay"
runs the module again on the new ids — without an attention mask, as a real graph was captured — and copies
the result INTO the static output, so a reader that keeps the static output past the next replay sees it
overwritten, as with a real graph. Memory is simulated: each capture adds ``capture_bytes(key)`` to its pool,
and :meth:`FakeGraphBackend.release` hands back the pools no live graph holds, as
``torch.cuda.empty_cache`` does; a pool handed back is not taken again (torch may assert on a dropped pool's
handle). ``fail`` makes the capture of a shape raise (after taking its pool's bytes, as a capture that ran out
of memory half-way would).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

from colo.modelserver.graphs import DeviceMemory, GraphKey
from colo.units import MIB

DEFAULT_CAPTURE_BYTES = 2 * MIB


class FakeCapturedForward:
    """A fake graph: the module, its pool id, and the static input/output it writes into."""

    def __init__(self, module: Any, pool: int, static_ids: Any, output: Any, *, fails: bool = False) -> None:
        self.module = module
        self.pool = pool
        self.static_ids = static_ids
        self.output = output
        self.fails = fails
        self.replays = 0

    def replay(self, input_ids: Any) -> Any:
        if self.fails:
            raise RuntimeError("CUDA error: operation failed during replay (fake)")
        self.static_ids.copy_(input_ids)
        fresh = self.module(input_ids=self.static_ids)
        _copy_into(self.output, fresh)
        self.replays += 1
        return self.output


def _copy_into(static: Any, fresh: Any) -> None:
    """Write every tensor of ``fresh`` into the same place of ``static`` (a tensor, a tuple, a ModelOutput)."""
    if hasattr(static, "copy_"):
        static.copy_(fresh)
    elif isinstance(static, dict):
        for name, value in static.items():
            _copy_into(value, fresh[name])
    elif isinstance(static, tuple | list):
        for value, new in zip(static, fresh, strict=True):
            _copy_into(value, new)


class FakeGraphBackend:
    """Records captures and simulates pool memory. ``memory_now``: what :meth:`memory` answers;
    ``capture_bytes(key)``: the bytes a capture of ``key`` adds (default 2 MiB); ``fail``: shape -> the error
    its capture raises (``replay_fails``: shapes whose replay raises)."""

    def __init__(
        self,
        *,
        memory_now: DeviceMemory | None = None,
        capture_bytes: Callable[[GraphKey], int] = lambda key: DEFAULT_CAPTURE_BYTES,
        fail: dict[GraphKey, Exception] | None = None,
        replay_fails: set[GraphKey] | None = None,
    ) -> None:
        self.memory_now = memory_now or DeviceMemory(reserved_bytes=0, peak_reserved_bytes=0, free_bytes=8192 * MIB)
        self.capture_bytes = capture_bytes
        self.fail = dict(fail or {})
        self.replay_fails = set(replay_fails or ())
        self.captures: list[GraphKey] = []
        self.releases = 0
        self._ids = itertools.count(1)
        self._pool_bytes: dict[int, int] = {}
        self._graphs: dict[int, weakref.WeakSet[FakeCapturedForward]] = {}
        self._handed_back: set[int] = set()

    def memory(self) -> DeviceMemory:
        return self.memory_now

    def new_pool(self) -> object:
        pool = next(self._ids)
        self._pool_bytes[pool] = 0
        self._graphs[pool] = weakref.WeakSet()
        return pool

    def capture(self, module: Any, input_ids: Any, pool: object) -> tuple[FakeCapturedForward, int]:
        assert isinstance(pool, int) and pool in self._pool_bytes, "capture into a pool new_pool did not make"
        if pool in self._handed_back:
            raise RuntimeError(f"INTERNAL ASSERT FAILED: pool {pool} was handed back; use_count > 0 (fake)")
        key: GraphKey = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        added = self.capture_bytes(key)
        self._pool_bytes[pool] += added
        if key in self.fail:
            raise self.fail[key]
        self.captures.append(key)
        static_ids = input_ids.clone()
        output = module(input_ids=static_ids)
        graph = FakeCapturedForward(module, pool, static_ids, output, fails=key in self.replay_fails)
        self._graphs[pool].add(graph)
        return graph, added

    def release(self) -> None:
        """Hand back every pool no live graph holds (as ``torch.cuda.empty_cache`` frees freeable pools)."""
        self.releases += 1
        for pool, graphs in self._graphs.items():
            if not graphs and self._pool_bytes[pool]:
                self._pool_bytes[pool] = 0
                self._handed_back.add(pool)

    def held_bytes(self) -> int:
        """The bytes all pools hold now (a dropped pool's only after :meth:`release`)."""
        return sum(self._pool_bytes.values())
