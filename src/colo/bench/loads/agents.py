"""Agents as users reach them: N concurrent HTTP clients per agent, every agent of a config at once.

Each client is a thread sending ``POST /infer`` back to back to its agent (one pooled ``httpx.Client`` per
agent, a connection per client), cycling through the agent's models. A request carries ``input_ids`` of
``rows`` × ``seq_len`` tokens: ``--batch`` × ``--seq-len`` clamped to the model's declared worst case
(``batch_size`` × ``max_seq_len``), generators and seq2seq models also ``max_new_tokens`` (at most their
``new_tokens``). Bodies are built once; answers are not parsed (the load generator stays cheap).

A 503 with ``Retry-After`` is counted apart (the agent shedding load as designed) and honoured: the client
waits that long, as a well-behaved user would. Every other status, and a request that failed in transport
(``"transport"``), is an error. Latency percentiles are over the successful requests.

A window is ``warmup_secs`` (not counted) then ``window_secs``: a request counts when it started and ended
inside the timed window. The load generator's own CPU time (``time.process_time``: every thread of this
process) over the wall time says whether it could have been the bottleneck.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from colo.bench import stats

#: Token ids in requests: below every catalog model's vocabulary, not special tokens.
TOKEN_ID_BASE = 1000
RETRY_AFTER_KEY = "503-retry-after"
TRANSPORT_KEY = "transport"
REQUEST_TIMEOUT_SECS = 60.0
RETRY_AFTER_MAX_SECS = 5.0
SPAWN_ALLOWANCE_SECS = 3.0  # worker processes import httpx and connect before the window opens


@dataclass(frozen=True)
class RequestShape:
    """One model's request: ``rows`` sequences of ``seq_len`` tokens (and ``new_tokens`` for generators);
    ``model`` None: the agent's first model."""

    model: str | None
    rows: int
    seq_len: int
    new_tokens: int | None = None

    def body(self) -> bytes:
        """The JSON body of ``POST /infer``."""
        ids = [[TOKEN_ID_BASE + (r * 7 + t) % 1000 for t in range(self.seq_len)] for r in range(self.rows)]
        doc: dict[str, Any] = {"input_ids": ids}
        if self.model is not None:
            doc["model"] = self.model
        if self.new_tokens is not None:
            doc["max_new_tokens"] = self.new_tokens
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rows": self.rows, "seq_len": self.seq_len, "new_tokens": self.new_tokens}


@dataclass(frozen=True)
class AgentTarget:
    """One agent to load: its base URL, a request shape per model, and (when known) its pid, limit and the GPU
    colo runs it on (``gpu``: ``GpuSlot.key``, e.g. ``local:1``)."""

    name: str
    url: str
    shapes: tuple[RequestShape, ...]
    pid: int | None = None
    limit_bytes: int | None = None
    gpu: str | None = None

    @property
    def infer_url(self) -> str:
        return self.url.rstrip("/") + "/infer"

    @property
    def health_url(self) -> str:
        return self.url.rstrip("/") + "/health"


@dataclass
class _Tally:
    """What one client saw (written by its thread only; read after it ended)."""

    latencies_secs: list[float] = field(default_factory=list)
    rows: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def error(self, key: str, text: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        self.last_error = text[:300]


@dataclass(frozen=True)
class AgentLoad:
    """One agent over a timed window: successful requests (their latencies, sequences), errors by status
    (``503-retry-after`` apart, ``transport`` for no answer), and its NVML peak against its limit (bytes)."""

    name: str
    url: str
    clients: int
    elapsed_secs: float
    sequences: int
    latencies_secs: tuple[float, ...]
    errors: Mapping[str, int]
    pid: int | None = None
    limit_bytes: int | None = None
    peak_memory_bytes: int | None = None
    last_error: str = ""

    @property
    def requests(self) -> int:
        return len(self.latencies_secs)

    @property
    def seq_per_sec(self) -> float:
        return stats.rate(self.sequences, self.elapsed_secs)

    @property
    def requests_per_sec(self) -> float:
        return stats.rate(self.requests, self.elapsed_secs)

    @property
    def retry_after(self) -> int:
        return int(self.errors.get(RETRY_AFTER_KEY, 0))

    @property
    def hard_errors(self) -> int:
        """Errors other than 503-with-Retry-After."""
        return sum(n for k, n in self.errors.items() if k != RETRY_AFTER_KEY)

    @property
    def within_limit(self) -> bool | None:
        """Peak ≤ limit; None when either is unknown."""
        if self.peak_memory_bytes is None or self.limit_bytes is None:
            return None
        return self.peak_memory_bytes <= self.limit_bytes


def drive(
    targets: Sequence[AgentTarget],
    clients: int,
    window_secs: float,
    *,
    warmup_secs: float = 2.0,
    timeout_secs: float = REQUEST_TIMEOUT_SECS,
    transport: Any = None,
    start_at: float | None = None,
) -> tuple[list[AgentLoad], float, float]:
    """Drive every target with ``clients`` clients for ``warmup_secs`` + ``window_secs``.

    ``transport``: an httpx transport (tests: ``httpx.MockTransport``); ``start_at``: the timed window opens at
    this ``time.monotonic()`` instead (several processes share one window; load until then is the warm-up).
    Returns the per-agent loads (peak memory unset), the timed window's wall seconds, and this process's CPU
    seconds over it.
    """
    import httpx

    pools = {
        t.name: httpx.Client(
            timeout=timeout_secs,
            limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients),
            headers={"content-type": "application/json"},
            transport=transport,
        )
        for t in targets
    }
    bodies = {t.name: [s.body() for s in t.shapes] for t in targets}
    rows = {t.name: [s.rows for s in t.shapes] for t in targets}
    tallies = {t.name: [_Tally() for _ in range(clients)] for t in targets}
    barrier = threading.Barrier(len(targets) * clients + 1)
    go = threading.Event()  # set once the window's times are fixed, after every thread is ready
    times: dict[str, float] = {}

    def client(target: AgentTarget, index: int) -> None:
        tally = tallies[target.name][index]
        pool = pools[target.name]
        shapes = bodies[target.name]
        sizes = rows[target.name]
        turn = index  # clients of a multi-model agent start on different models
        barrier.wait()
        go.wait()
        start, end = times["start"], times["end"]
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            k = turn % len(shapes)
            turn += 1
            counted = sent >= start
            try:
                resp = pool.post(target.infer_url, content=shapes[k])
                status = resp.status_code
                retry_after = resp.headers.get("retry-after")
                text = resp.text if status != 200 else ""
            except httpx.HTTPError as exc:
                if counted:
                    tally.error(TRANSPORT_KEY, f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)  # a refused connection must not spin
                continue
            done = time.monotonic()
            if status == 200:
                if counted and done <= end:
                    tally.latencies_secs.append(done - sent)
                    tally.rows += sizes[k]
                continue
            if counted and done <= end:
                key = RETRY_AFTER_KEY if status == 503 and retry_after is not None else str(status)
                tally.error(key, f"{status}: {text}")
            if status == 503 and retry_after is not None:
                time.sleep(min(_seconds(retry_after), RETRY_AFTER_MAX_SECS, max(end - done, 0.0)))

    threads = [
        threading.Thread(target=client, args=(t, i), name=f"colo-bench-{t.name}-{i}", daemon=True)
        for t in targets
        for i in range(clients)
    ]
    for th in threads:
        th.start()
    barrier.wait()
    times["start"] = time.monotonic() + warmup_secs if start_at is None else start_at
    times["end"] = times["start"] + window_secs
    go.set()
    _sleep_until(times["start"])
    cpu0, wall0 = time.process_time(), time.monotonic()
    _sleep_until(times["end"])
    cpu1, wall1 = time.process_time(), time.monotonic()
    for th in threads:
        th.join(timeout=timeout_secs + 5.0)
    for pool in pools.values():
        pool.close()
    loads = [_merge(t, clients, tallies[t.name], window_secs) for t in targets]
    return loads, wall1 - wall0, cpu1 - cpu0


@dataclass(frozen=True)
class DriveResult:
    """:func:`drive_spread`'s answer: per-agent loads, the window's wall seconds, the load generator's CPU
    seconds (every process) and the busiest process's share of one core."""

    loads: list[AgentLoad]
    wall_secs: float
    cpu_secs: float
    max_process_cores: float
    processes: int


def drive_spread(
    targets: Sequence[AgentTarget],
    clients: int,
    window_secs: float,
    *,
    warmup_secs: float = 2.0,
    processes: int = 1,
    transport: Any = None,
) -> DriveResult:
    """:func:`drive`, the targets split over ``processes`` worker processes (each its own interpreter, so
    one GIL never limits the load) sharing one timed window; ``processes`` 1 (or a ``transport``) runs here.

    The window opens ``warmup_secs`` (at least :data:`SPAWN_ALLOWANCE_SECS`) after the workers were asked to
    start; a worker that started later still counts only its share of the window, which its rates show.
    """
    groups = [list(targets[i::processes]) for i in range(max(1, min(processes, len(targets))))]
    if len(groups) == 1 or transport is not None:
        loads, wall, cpu = drive(targets, clients, window_secs, warmup_secs=warmup_secs, transport=transport)
        return DriveResult(loads, wall, cpu, cpu / wall if wall > 0 else 0.0, 1)
    import concurrent.futures
    import multiprocessing

    start_at = time.monotonic() + max(warmup_secs, SPAWN_ALLOWANCE_SECS)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (the sampler's)
    with concurrent.futures.ProcessPoolExecutor(len(groups), mp_context=ctx) as pool:
        futures = [
            pool.submit(drive, group, clients, window_secs, warmup_secs=0.0, start_at=start_at) for group in groups
        ]
        answers = [f.result() for f in futures]
    order = {t.name: i for i, t in enumerate(targets)}
    loads = sorted((ld for a in answers for ld in a[0]), key=lambda ld: order[ld.name])
    wall = max(a[1] for a in answers)
    return DriveResult(
        loads, wall, sum(a[2] for a in answers), max(a[2] / a[1] if a[1] > 0 else 0.0 for a in answers), len(groups)
    )


def _merge(target: AgentTarget, clients: int, tallies: Sequence[_Tally], window_secs: float) -> AgentLoad:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    seqs = 0
    last = ""
    for t in tallies:
        latencies.extend(t.latencies_secs)
        seqs += t.rows
        for k, n in t.errors.items():
            errors[k] = errors.get(k, 0) + n
        last = t.last_error or last
    return AgentLoad(
        target.name,
        target.url,
        clients,
        window_secs,
        seqs,
        tuple(latencies),
        errors,
        pid=target.pid,
        limit_bytes=target.limit_bytes,
        last_error=last,
    )


def _seconds(header: str) -> float:
    try:
        return max(float(header), 0.0)
    except ValueError:
        return 1.0


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def wait_healthy(targets: Sequence[AgentTarget], timeout_secs: float, *, transport: Any = None) -> list[str]:
    """Poll every target's ``/health`` until all answer 200 or ``timeout_secs`` pass; returns the names of
    those that never did (empty: all healthy)."""
    import httpx

    pending = {t.name: t for t in targets}
    deadline = time.monotonic() + timeout_secs
    with httpx.Client(timeout=2.0, transport=transport) as client:
        while pending:
            for name, t in list(pending.items()):
                try:
                    if client.get(t.health_url).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return sorted(pending)
