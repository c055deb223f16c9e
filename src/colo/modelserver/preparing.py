"""Requests checked and tokenised off the event loop, on a few threads of the agent's own.

Why: tokenising 8 texts of 128 tokens takes a millisecond or more, nearly all of it inside the Rust tokenizer
with the GIL released (:class:`colo.modelserver.tokens.HfTokenizer`). Done on the event loop, that millisecond
holds up every other request's HTTP work; on a :class:`PreparePool` thread the loop goes on reading and
answering requests, the device thread goes on running batches, and on a machine with cores to spare several
requests are tokenised at once. The pool thread also queues the request for the device, and the event loop
is woken once, when the request's batch is answered (:meth:`colo.modelserver.runtime.AgentRuntime.submit_prepared`,
:func:`colo.modelserver.batching.answered`).

- :meth:`PreparePool.submit` runs ``fn(*args)`` on a pool thread and returns its future; its error (a bad
  request, a full queue) is left in the future for the caller to raise, as if ``fn`` had run on its own thread.
- :meth:`PreparePool.close` stops taking work: a later :meth:`~PreparePool.submit` raises
  :class:`~colo.modelserver.batching.QueueFull` ("the agent is stopping", HTTP 503, as the device worker's
  own); work already handed over still runs (and finds the device worker closed). Threads start only when
  work comes, and end once the pool is closed and its work is done.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from colo.modelserver.batching import QueueFull

T = TypeVar("T")

#: The fewest threads :func:`default_threads` gives: one thread alone stalls on every return from the
#: tokenizer, waiting for the GIL that the device thread and the loop pass between them, while a second one
#: tokenises (on 2 CPU cores, 1 thread gave ~1,400 seq/s and 2 ~2,700 in ``scripts/agent_host_path.py``).
MIN_DEFAULT_THREADS = 2
#: The most: beyond 4 requests tokenised at once, the event loop and the device thread (both GIL-bound) are
#: the limit, not tokenising.
MAX_DEFAULT_THREADS = 4


def default_threads(cpus: int | None = None) -> int:
    """Threads for a pool on a machine of ``cpus`` usable cores (default: this process's): half of them,
    within :data:`MIN_DEFAULT_THREADS` .. :data:`MAX_DEFAULT_THREADS` — the other half is the event loop's,
    the device thread's and the clients'."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(MIN_DEFAULT_THREADS, min(MAX_DEFAULT_THREADS, cpus // 2))


class PreparePool:
    """``threads`` threads (default :func:`default_threads`) named ``name``-N that prepare requests."""

    def __init__(self, threads: int | None = None, *, name: str = "colo-agent-prepare") -> None:
        count = default_threads() if threads is None else threads
        if count < 1:
            raise ValueError(f"threads {count} must be at least 1")
        self.threads = count
        self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn(*args)`` on a pool thread; its result or error comes in the returned future. Raises
        QueueFull once the pool is closed."""
        with self._lock:
            if self._closed:
                raise QueueFull("the agent is stopping", hint="retry against a running agent")
            return self._executor.submit(fn, *args)

    def close(self) -> None:
        """Stop taking work; what was handed over still runs. Returns at once."""
        with self._lock:
            self._closed = True
            self._executor.shutdown(wait=False)
