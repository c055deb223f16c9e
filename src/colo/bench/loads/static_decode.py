"""What the two decode workloads share: greedy one-token steps over a static KV cache of ``max_len`` positions.

One request runs ``tokens_per_request`` steps for each of ``batch_size`` streams (replays back to back, one
synchronisation at the end); throughput is counted in tokens (streams × steps). Decoding starts at
``start_pos``; a request that would run past ``max_len`` first rewinds the cache to ``start_pos``. How the
step, the rewind and the synchronisation are built is the subclass's ``prepare``: a compact Llama-style
decoder (:mod:`.decode`) or a transformers model with a ``StaticCache`` (:mod:`.hf_decode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from colo.bench.loads.base import RequestOutcome


def _nothing() -> None:
    return None


class StaticDecodeWorkload:
    """The settings, checks and request loop of a static-cache decode; subclasses implement ``prepare``.

    A subclass sets its defaults for ``max_len``, ``start_pos`` and ``dtype`` (class attributes ``default_*``)
    and ``min_start_pos``, the first position it can start decoding at. Raises ValueError for settings that
    leave no room.
    """

    unit = "tok"
    min_start_pos = 0
    default_max_len = 1024
    default_start_pos = 128
    default_dtype = "bfloat16"

    def __init__(
        self,
        *,
        batch_size: int = 1,
        tokens_per_request: int = 32,
        max_len: int | None = None,
        start_pos: int | None = None,
        dtype: str | None = None,
        device: str = "auto",
        cuda_graphs: bool = True,
    ) -> None:
        max_len = self.default_max_len if max_len is None else max_len
        start_pos = self.default_start_pos if start_pos is None else start_pos
        if batch_size < 1 or tokens_per_request < 1:
            raise ValueError("batch_size and tokens_per_request must be positive")
        if not self.min_start_pos <= start_pos < max_len - tokens_per_request:
            raise ValueError(f"start_pos {start_pos} must leave room for {tokens_per_request} tokens in {max_len}")
        self.batch_size = batch_size
        self.tokens_per_request = tokens_per_request
        self.max_len = max_len
        self.start_pos = start_pos
        self.dtype = self.default_dtype if dtype is None else dtype
        self.device = device
        self.cuda_graphs = cuda_graphs
        self._step: Callable[[], Any] | None = None
        self._reset: Callable[[], None] = _nothing
        self._sync: Callable[[], None] = _nothing
        self._pos = start_pos

    def _ready(self, step: Callable[[], Any], reset: Callable[[], None], sync: Callable[[], None]) -> None:
        """``prepare``'s last part: keep the step, rewind and sync, and run one untimed request (first replays
        are slower)."""
        self._step, self._reset, self._sync = step, reset, sync
        self._pos = self.start_pos
        self.request()

    def request(self) -> RequestOutcome:
        assert self._step is not None, "prepare() first"
        if self._pos + self.tokens_per_request >= self.max_len:
            self._reset()  # wrap around: the static cache has max_len positions
            self._pos = self.start_pos
        for _ in range(self.tokens_per_request):
            self._step()
        self._sync()
        self._pos += self.tokens_per_request
        return RequestOutcome(float(self.batch_size * self.tokens_per_request))

    def close(self) -> None:
        self._step = None
        self._reset = self._sync = _nothing
