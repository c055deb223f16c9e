"""One device worker per agent: requests queue, and are merged into batches no larger than the plan's worst case.

Why: the plan sized the agent's MPS memory limit for ONE worst-case batch (``batch_size`` × ``max_seq_len``).
Batches run at once from an HTTP thread pool would each hold activations — and each thread would get its own
cuBLAS handle and workspace — so concurrency alone could push the process past its limit
(``CUBLAS_STATUS_ALLOC_FAILED`` under load). Here every piece of device work runs on one thread, one batch at a
time, whatever the concurrency:

- :meth:`DeviceWorker.submit` queues a request (:class:`Job`); a full queue raises :class:`QueueFull` (the
  API answers 503 with ``Retry-After``).
- The worker takes the oldest job and gathers queued jobs for the same model while their rows fit in the
  model's ``batch_size`` (encoders, and generators of one model: their prompts are generated together, each
  request's answer cut back to its own ``max_new_tokens``), then runs them as one batch. It waits for more
  (at most ``wait_secs``) only while another request is *arriving* — inside the agent, between its HTTP
  handler and the queue (:meth:`DeviceWorker.arriving`) — so a lone request never waits at all.
- :meth:`DeviceWorker.call` runs any function on the worker thread (loading, warm-up, the fault hook), ahead of
  queued requests, so all device work shares one thread (one cuBLAS handle, one workspace).
- :func:`answered` lets an event loop wait for a job's future without a thread of its own: the device thread
  wakes the loop when it answers (one hand-off each way, where a waiting HTTP worker thread adds two).

The executor given to the worker answers every job's future; the worker answers any it left unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError

T = TypeVar("T")


class QueueFull(ColoError):
    """The agent's request queue is full: try again shortly (HTTP 503 with Retry-After)."""


@dataclass
class Job:
    """One checked request waiting for the device: ``rows`` of token ids for ``model_id``.

    ``mergeable`` jobs of one model are batched together up to ``max_rows`` rows; ``new_tokens`` is for
    generators (a merged batch generates the largest and each job keeps its own); ``raw`` asks full numpy
    outputs (the standard routes). ``future`` receives the executor's answer.
    """

    model_id: str
    rows: Sequence[Sequence[int]]
    max_rows: int
    mergeable: bool
    new_tokens: int = 0
    raw: bool = False
    enqueued: float = 0.0
    future: Future[Any] = field(default_factory=Future)


@dataclass
class Arrival:
    """A request counted as arriving (see :meth:`DeviceWorker.arriving`) until ``ended``."""

    ended: bool = False


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class DeviceWorker:
    """The agent's one device thread and its bounded request queue.

    ``execute(jobs)`` runs one batch (a list of jobs of one model, their rows together at most ``max_rows``)
    and answers each job's future. ``wait_secs``: the longest a batch waits for more requests;
    ``max_queue``: requests allowed to wait (beyond it :meth:`submit` raises QueueFull);
    ``on_depth(n)`` is told the queue depth whenever it changes.
    """

    def __init__(
        self,
        execute: Callable[[list[Job]], None],
        *,
        wait_secs: float,
        max_queue: int,
        on_depth: Callable[[int], None] = lambda n: None,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "colo-agent-device",
    ) -> None:
        if wait_secs < 0:
            raise ValueError(f"wait_secs {wait_secs} is negative")
        if max_queue < 1:
            raise ValueError(f"max_queue {max_queue} must be at least 1")
        self._execute = execute
        self.wait_secs = wait_secs
        self.max_queue = max_queue
        self._on_depth = on_depth
        self._clock = clock
        self._name = name
        self._jobs: deque[Job] = deque()
        self._calls: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._arriving = 0
        self._thread: threading.Thread | None = None

    # --- callers ---------------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        with self._cond:
            return len(self._jobs)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Mark a request on its way to the queue (being checked and tokenised): a batch being gathered waits
        for it (at most ``wait_secs``) instead of leaving without it; nothing arriving, nothing waits. Pass the
        :class:`Arrival` to :meth:`submit`, which ends it as it queues the job (one lock: never a moment
        where the request is neither arriving nor queued); leaving the block ends it otherwise."""
        arrival = Arrival()
        with self._cond:
            self._arriving += 1
        try:
            yield arrival
        finally:
            with self._cond:
                if not arrival.ended:
                    arrival.ended = True
                    self._arriving -= 1
                    self._cond.notify_all()

    def submit(self, job: Job, arrival: Arrival | None = None) -> Future[Any]:
        """Queue ``job`` (ending its ``arrival``); its future is answered by the executor. Raises QueueFull
        when the queue is full."""
        with self._cond:
            if arrival is not None and not arrival.ended:
                arrival.ended = True
                self._arriving -= 1
                self._cond.notify_all()
            if self._closed:
                raise QueueFull("the agent is stopping", hint="retry against a running agent")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._jobs)} requests are already waiting for the device (max_queue {self.max_queue})",
                    hint="retry after a moment, or send larger batches with fewer clients",
                )
            job.enqueued = self._clock.monotonic()
            self._jobs.append(job)
            depth = len(self._jobs)
            self._ensure_thread()
            self._cond.notify()
        self._on_depth(depth)
        return job.future

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` on the device thread (ahead of queued requests) and return its result or raise its error."""
        item = _Call(fn)
        with self._cond:
            if self._closed:
                raise RuntimeError("the device worker is closed")
            self._calls.append(item)
            self._ensure_thread()
            self._cond.notify()
        result: T = item.future.result(timeout)
        return result

    def close(self) -> None:
        """Stop taking work; queued jobs are failed with QueueFull. The thread ends after its current batch."""
        with self._cond:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in left:
            _answer(job.future, exc=QueueFull("the agent is stopping"))
        self._on_depth(0)

    # --- the device thread -------------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            work = self._next()
            if work is None:
                return
            if isinstance(work, _Call):
                try:
                    work.future.set_result(work.fn())
                except BaseException as exc:  # handed to the caller, who decides
                    work.future.set_exception(exc)
                continue
            try:
                self._execute(work)
            except BaseException as exc:  # the executor failed outside a job: fail what it left
                for job in work:
                    _answer(job.future, exc=exc)
            for job in work:
                _answer(job.future, exc=RuntimeError("the device worker gave no answer"))

    def _next(self) -> _Call | list[Job] | None:
        with self._cond:
            while not self._calls and not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            if self._calls:
                return self._calls.popleft()
            first = self._jobs.popleft()
            batch = [first]
            if first.mergeable:
                rows = len(first.rows)
                deadline = self._clock.monotonic() + self.wait_secs
                while rows < first.max_rows and not self._closed:
                    rows = self._gather(first, batch, rows)
                    remaining = deadline - self._clock.monotonic()
                    if rows >= first.max_rows or remaining <= 0 or self._calls or self._arriving == 0:
                        break
                    self._cond.wait(remaining)
            depth = len(self._jobs)
        self._on_depth(depth)
        return batch

    def _gather(self, first: Job, batch: list[Job], rows: int) -> int:
        """Move queued jobs of ``first``'s model that still fit into ``batch`` (oldest first)."""
        kept: deque[Job] = deque()
        while self._jobs:
            job = self._jobs.popleft()
            if job.mergeable and job.model_id == first.model_id and rows + len(job.rows) <= first.max_rows:
                batch.append(job)
                rows += len(job.rows)
            else:
                kept.append(job)
        self._jobs = kept
        return rows


async def answered(future: Future[Any]) -> None:
    """Wait on the running event loop until ``future`` is answered (its result or error is left in it).

    Never cancels ``future``, unlike :func:`asyncio.wrap_future`: a job's future belongs to the device thread,
    which answers it whatever became of the caller (a cancelled job future would make its ``set_result``
    raise there, in the middle of a batch). A caller cancelled meanwhile just stops waiting.
    """
    if future.done():
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    def on_done(_: Future[Any]) -> None:  # on the device thread
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(wake)

    future.add_done_callback(on_done)
    await woken


def _answer(future: Future[Any], *, exc: BaseException) -> None:
    if not future.done():
        with contextlib.suppress(Exception):  # answered by another thread meanwhile
            future.set_exception(exc)


def merged_rows(jobs: Sequence[Job]) -> int:
    """Rows in a batch of jobs."""
    return sum(len(j.rows) for j in jobs)
