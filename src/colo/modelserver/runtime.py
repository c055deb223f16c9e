"""The built-in agent's state: its models, readiness, and checked, serialised inference.

One :class:`AgentRuntime` per process. :meth:`AgentRuntime.load` builds every model of the agent, then runs a
warm-up forward on the device (the worst-case batch × sequence when asked, so the process's memory peak is
the one the plan was sized for); only then is the agent ready and ``/health`` answers 200.

All device work — loading, warm-up, every batch — runs on ONE thread, the :class:`DeviceWorker`: requests are
checked by the HTTP side (the event loop, or a thread of the prepare pool), queued, and merged (encoders) into
batches of at most the model's ``batch_size`` rows of at most ``max_seq_len`` ids, so the device never holds
more than the worst case the MPS limit was sized for, whatever the concurrency.

After the warm-up, encoder batches of rows of one length may be replayed from CUDA graphs
(:mod:`colo.modelserver.graphs`), within a memory budget taken from the room the warm-up left; ``/health``
says how many are held (``cuda_graphs``).

``/health`` is ``ready`` only while the CUDA context answers a tiny round trip (:class:`ContextWatch`); a
context found unusable — by the probe or by a request — turns the runtime ``context_lost`` for good: the
reason is logged once and ``on_context_lost`` is called (the server exits with ``EXIT_CONTEXT_LOST``).

Errors a request can cause: :class:`RequestError` (bad input, HTTP 422), :class:`NotReady` (503),
:class:`QueueFull` (503 with Retry-After), :class:`ContextLost` (503), :class:`DeviceOutOfMemory` (507: CUDA
out of memory or a cuBLAS/cuDNN allocation failure; one log line, the agent stays up). Load failures leave the
runtime ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError, UsageError
from colo.modelserver.batching import DeviceWorker, Job, QueueFull, merged_rows
from colo.modelserver.device_errors import DeviceErrorKind, classify, first_line
from colo.modelserver.device_health import (
    DEFAULT_HANG_SECS,
    DEFAULT_TIMEOUT_SECS,
    ContextWatch,
    Probe,
    cuda_round_trip,
    trigger_device_assert,
)
from colo.modelserver.graphs import EncoderGraphs, GraphBackend, graph_budget_bytes, headroom_bytes
from colo.modelserver.inference import (
    BatchResult,
    CudaWait,
    generate_merged,
    is_oom,
    run_batch,
    run_merged,
    worst_case_rows,
)
from colo.modelserver.loading import LoadedModel, load_model
from colo.modelserver.metrics import AgentMetrics
from colo.modelserver.preparing import PreparePool
from colo.modelserver.startup import StartPhases
from colo.spec.config import ModelSpec
from colo.units import MIB

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "unresponsive", "failed", "context_lost"]
OOM_TEXT = "CUDA out of memory"
DEFAULT_BATCH_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 64
RETRY_AFTER_SECS = 1


class RequestError(UsageError):
    """An inference request the agent will not run: unknown model, too large, ids outside the vocabulary."""


class UnknownModel(RequestError):
    """The request names a model this agent does not serve (OpenAI's 404 ``model_not_found``)."""


class NotReady(ColoError):
    """The agent is still loading (or failed to load)."""


class DeviceOutOfMemory(ColoError):
    """A request ran the device out of memory; the agent stays up and frees what it can."""


class ContextLost(ColoError):
    """The agent's CUDA context is unusable (HTTP 503); the agent is exiting to be restarted."""


class LoadOutOfMemory(ColoError):
    """Loading or warming up ran the device out of memory: the agent process exits with code 3."""

    exit_code = 3


# The ``errors_total`` label of each error a request can end with (anything else counts as "other").
_ERROR_LABELS: tuple[tuple[type[Exception], str], ...] = (
    (RequestError, "bad_request"),  # UnknownModel included
    (NotReady, "not_ready"),
    (QueueFull, "queue_full"),
    (DeviceOutOfMemory, "alloc_failed"),
    (ContextLost, "context_lost"),
)


def _error_label(exc: Exception) -> str:
    return next((label for kind, label in _ERROR_LABELS if isinstance(exc, kind)), "other")


@dataclass(frozen=True)
class InferInput:
    """A checked request: exactly one of ``texts`` / ``input_ids``. ``raw``: answer full outputs as numpy
    arrays (``vectors``, ``logits``) for the standard routes to format, instead of colo's JSON-ready ones.
    ``parse_secs``: what reading and checking the HTTP body took (observed as the ``parse`` phase)."""

    model: str | None = None
    texts: Sequence[str] | None = None
    input_ids: Sequence[Sequence[int]] | None = None
    max_new_tokens: int | None = None
    raw: bool = False
    parse_secs: float | None = None


@dataclass(frozen=True)
class _Answer:
    """A job's share of a batch: its result, when the batch started, and what it was merged with."""

    result: BatchResult
    started: float
    batch_requests: int
    batch_rows: int


@dataclass(frozen=True)
class Pending:
    """A checked request queued for the device (:meth:`AgentRuntime.submit`): its model and rows, when it
    was received and prepared (clock seconds), and the ``future`` its batch's answer comes in."""

    model: LoadedModel
    rows: list[list[int]]
    truncated: bool
    parse_secs: float | None
    received: float
    prepared: float
    future: Future[_Answer]


@dataclass
class _Counters:
    requests: int = 0
    rejected: int = 0
    out_of_memory: int = 0
    items: int = 0
    largest: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # model -> (rows, seq_len, new)


@dataclass
class AgentRuntime:
    """An agent's models on one device. Thread-safe: /health reads while a request or the load runs.

    ``loader`` builds one model (tests inject one). ``batch_wait_ms``: the longest a batch waits for more
    requests to merge; ``max_queue``: requests allowed to wait for the device (beyond: 503);
    ``prepare_threads``: threads that check and tokenise large requests off the event loop (None:
    :func:`colo.modelserver.preparing.default_threads`). ``probe``: the
    context round trip (default: :func:`cuda_round_trip` on CUDA, none on CPU); ``probe_timeout_secs`` bounds
    it (past it /health says ``unresponsive``, 503); a probe unanswered for ``hang_secs`` is a hung device and
    the context is declared lost. ``on_context_lost(reason)`` is called once when the context is found
    unusable.

    ``cuda_graphs``: replay encoder batches from CUDA graphs after the warm-up (on CUDA, or wherever
    ``graph_backend`` is given: tests inject a fake). Their budget is ``graph_budget_bytes`` when given, else
    taken from the room the warm-up left (``memory_cap_bytes``: PyTorch's allocator cap on a GPU without MPS).
    ``cuda_wait``: how the device thread waits for a batch (:class:`~colo.modelserver.inference.CudaWait`).
    """

    agent: str
    specs: Sequence[tuple[str, ModelSpec]]
    device: str
    dtype: str | None = None
    worst_case: bool = False
    loader: Callable[..., LoadedModel] = load_model
    clock: Clock = SYSTEM_CLOCK
    status: Status = "loading"
    error: str | None = None
    models: dict[str, LoadedModel] = field(default_factory=dict)
    warm_up: str | None = None
    output_kinds: dict[str, str] = field(default_factory=dict)  # model -> what it answers (from the warm-up)
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    matmul_precision: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    prepare_threads: int | None = None
    probe: Probe | None = None
    probe_timeout_secs: float = DEFAULT_TIMEOUT_SECS
    hang_secs: float = DEFAULT_HANG_SECS
    on_context_lost: Callable[[str], None] = lambda reason: None
    start: StartPhases | None = None  # the agent's start-up phases, ended by the first ready /health
    cuda_graphs: bool = True
    cuda_wait: CudaWait = CudaWait.AUTO
    graph_backend: GraphBackend | None = None
    graph_budget_bytes: int | None = None
    memory_cap_bytes: int | None = None
    graphs: EncoderGraphs = field(init=False)
    metrics: AgentMetrics = field(init=False)
    _state_lock: threading.Lock = field(default_factory=threading.Lock)
    _models_lock: threading.Lock = field(default_factory=threading.Lock)  # /health never waits on a batch
    _counters: _Counters = field(default_factory=_Counters)
    _started: float = 0.0
    _ready_secs: float | None = None
    _worker: DeviceWorker = field(init=False)
    _prepare: PreparePool = field(init=False)
    _watch: ContextWatch | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._started = self.clock.monotonic()
        if not self.specs:
            raise ValueError(f"agent {self.agent} has no models")
        self.metrics = AgentMetrics(self.agent)
        self.graphs = EncoderGraphs.off("not loaded yet")
        self._worker = DeviceWorker(
            self._execute,
            wait_secs=self.batch_wait_ms / 1000.0,
            max_queue=self.max_queue,
            on_depth=self.metrics.queue_depth.set,
            name=f"colo-agent-{self.agent}-device",
        )
        self._prepare = PreparePool(self.prepare_threads, name=f"colo-agent-{self.agent}-prepare")
        probe = self.probe
        if probe is None and self.device.startswith("cuda"):
            probe = cuda_round_trip(self.device)
        if probe is not None:
            self._watch = ContextWatch(probe, timeout_secs=self.probe_timeout_secs)

    # --- loading -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Build every model, then warm up; on success the runtime is ``ready``.

        Raises LoadOutOfMemory (after logging a line with "CUDA out of memory") when the device runs out of
        memory; any other failure is re-raised. Either way the runtime is left ``failed`` with the reason.
        """
        step = ["loading", self.specs[0][0]]  # what was running when something failed

        def build_and_warm_up() -> None:  # on the device thread, like every batch after it
            if self.cuda_graphs and self.graph_backend is None and self.device.startswith("cuda"):
                from colo.modelserver.cuda_graphs import use_own_stream

                use_own_stream(self.device)  # graphs are captured on it: its cuBLAS workspace comes with the warm-up
            if self.matmul_precision is not None:
                import torch

                torch.set_float32_matmul_precision(self.matmul_precision)  # process-wide: float32 matmuls
            for model_id, spec in self.specs:
                step[1] = model_id
                loaded = self.loader(model_id, spec, device=self.device, dtype=self.dtype, clock=self.clock)
                with self._models_lock:
                    self.models[model_id] = loaded
            step[0] = "warming up"
            self._warm_up(step)
            self.graphs = self._graphs_after_warm_up()

        try:
            self._worker.call(build_and_warm_up)
        except Exception as exc:
            self.status = "failed"
            if is_oom(exc):
                self.error = f"{OOM_TEXT} while {step[0]} {step[1]}: {exc}"
                log.error("%s", self.error)
                raise LoadOutOfMemory(self.error, hint="the agent's MPS memory limit is too low for it") from exc
            self.error = f"{type(exc).__name__} while {step[0]} {step[1]}: {exc}"
            log.error("%s", self.error)
            raise
        self._ready_secs = self.clock.monotonic() - self._started
        self.status = "ready"
        peak = device_memory(self.device)["max_memory_reserved_bytes"]
        log.info(
            "agent %s ready on %s in %.2fs (warm-up: %s; peak reserved %s)",
            self.agent,
            self.device,
            self._ready_secs,
            self.warm_up,
            "n/a on cpu" if peak is None else f"{peak / MIB:.0f} MiB",
        )

    def _warm_up(self, step: list[str]) -> None:
        """One forward per model: the worst case (batch × max_seq_len, all new tokens) or one short row.

        ``step[1]`` is set to the model being warmed up (for the failure message).
        """
        for model_id, model in self.models.items():
            step[1] = model_id
            if self.worst_case:
                rows = worst_case_rows(model)
            else:
                rows = [[1 + i % max(1, model.vocab_size - 1) for i in range(min(8, model.limits.max_seq_len))]]
            new_tokens = model.limits.new_tokens if self.worst_case else min(2, model.limits.new_tokens)
            result = run_batch(
                model,
                rows,
                device=self.device,
                max_new_tokens=new_tokens,
                exact_new_tokens=self.worst_case,
                clock=self.clock,
            )
            self.output_kinds[model_id] = str(result.outputs["kind"])
            log.info(
                "%s: warm-up %d×%d on %s took %.1f ms",
                model_id,
                len(rows),
                len(rows[0]),
                self.device,
                result.forward_ms,
            )
        self.warm_up = "worst case (batch × max_seq_len)" if self.worst_case else "one short row"

    def _graphs_after_warm_up(self) -> EncoderGraphs:
        """The agent's CUDA graphs (on the device thread, after the warm-up): off when switched off, not on CUDA
        (and no backend injected) or without an encoder; else on, with a budget from the room left now."""
        if not self.cuda_graphs:
            return EncoderGraphs.off("switched off (--cuda-graphs off)")
        if not any(m.task == "encoder" for m in self.models.values()):
            return EncoderGraphs.off("no encoder among the agent's models")
        backend = self.graph_backend
        if backend is None:
            if not self.device.startswith("cuda"):
                return EncoderGraphs.off(f"not on CUDA ({self.device})")
            from colo.modelserver.cuda_graphs import TorchGraphBackend

            backend = TorchGraphBackend(self.device)
        budget = self.graph_budget_bytes
        room = "given"
        if budget is None:
            try:
                headroom = headroom_bytes(backend.memory(), self.memory_cap_bytes)
            except RuntimeError as exc:  # serve eagerly rather than not at all
                log.warning("CUDA graphs off: the device memory could not be read (%s)", first_line(exc))
                return EncoderGraphs.off(f"device memory unreadable: {first_line(exc)}")
            budget = graph_budget_bytes(headroom)
            room = f"{headroom / MIB:.0f} MiB left after the warm-up"
        graphs = EncoderGraphs(backend, budget_bytes=budget, clock=self.clock)
        log.info(
            "CUDA graphs on: encoder batches of one length up to %d×%d, pools budget %.1f MiB (%s)",
            graphs.max_rows, graphs.max_seq_len, budget / MIB, room,
        )
        return graphs

    # --- requests -----------------------------------------------------------------------------------------

    def model(self, model_id: str | None) -> LoadedModel:
        """The served model ``model_id`` (None: the agent's first). Raises ContextLost, NotReady, or
        UnknownModel naming the models served."""
        if self.status == "context_lost":
            raise ContextLost(f"agent {self.agent}: {self.error}", hint="the agent is restarting")
        if self.status != "ready":
            raise NotReady(f"agent {self.agent} is {self.status}" + (f": {self.error}" if self.error else ""))
        if model_id is None:
            return self.models[self.specs[0][0]]
        if model_id not in self.models:
            raise UnknownModel(f"model {model_id!r} is not served here (models: {', '.join(self.models)})")
        return self.models[model_id]

    def output_kind(self, model_id: str) -> str:
        """What ``model_id`` answers: ``embeddings``, ``classification``, ``token_predictions`` or
        ``generation`` (seen at warm-up)."""
        return self.output_kinds.get(model_id, "generation" if self.models[model_id].task != "encoder" else "")

    def _rows(self, model: LoadedModel, req: InferInput) -> tuple[list[list[int]], bool]:
        limits = model.limits
        if (req.texts is None) == (req.input_ids is None):
            raise RequestError("give exactly one of 'texts' or 'input_ids'")
        count = len(req.texts) if req.texts is not None else len(req.input_ids or ())
        if count == 0:
            raise RequestError("the batch is empty")
        if count > limits.max_batch:
            raise RequestError(
                f"batch of {count} is larger than {model.model_id}'s batch_size {limits.max_batch} "
                "(the worst case the agent's memory limit was planned for)"
            )
        if req.texts is not None:
            encoded = model.tokenizer.encode(req.texts, limits.max_seq_len)
            return encoded.ids, encoded.truncated
        rows = [list(r) for r in req.input_ids or ()]
        for i, row in enumerate(rows):
            if not row:
                raise RequestError(f"input_ids[{i}] is empty")
            if len(row) > limits.max_seq_len:
                raise RequestError(
                    f"input_ids[{i}] has {len(row)} ids; {model.model_id} takes at most {limits.max_seq_len}"
                )
            bad = next((v for v in row if not 0 <= v < model.vocab_size), None)
            if bad is not None:
                raise RequestError(f"input_ids[{i}] holds {bad}, outside the vocabulary [0, {model.vocab_size})")
        return rows, False

    def infer(self, req: InferInput) -> dict[str, Any]:
        """Check ``req`` against the model's limits, queue it for the device and wait for its batch.

        A JSON-ready answer with timings in ms (``queue_ms``: waiting for the device, merging included).
        Raises NotReady, ContextLost, RequestError, QueueFull, or DeviceOutOfMemory (the cache is emptied and
        the agent stays up); any other error of the batch as it is. :meth:`submit` then :meth:`collect`: an
        event loop waits between the two without blocking (:func:`colo.modelserver.batching.answered`).
        """
        return self.collect(self.submit(req))

    def submit_prepared(self, req: InferInput) -> Future[Pending]:
        """:meth:`submit` on a thread of the runtime's :class:`~colo.modelserver.preparing.PreparePool`
        (``prepare_threads``). The returned future is answered once the request's batch is — with the
        :class:`Pending`, for :meth:`collect` — or at once with submit's error: an event loop waiting on it
        wakes once per request. The time ``req`` waits for a pool thread counts as its ``tokenize`` phase.
        Raises QueueFull once closed."""
        done: Future[Pending] = Future()

        def prepare(received: float) -> None:
            try:
                pending = self.submit(req, received)
            except Exception as exc:  # submit counted it; the caller raises it
                done.set_exception(exc)
                return
            pending.future.add_done_callback(lambda _: done.set_result(pending))

        try:
            self._prepare.submit(prepare, self.clock.monotonic())
        except QueueFull as exc:
            self.metrics.error(_error_label(exc))
            raise
        return done

    def submit(self, req: InferInput, received: float | None = None) -> Pending:
        """Check and tokenise ``req`` on the calling thread and queue it for the device; the batch's answer
        comes in the returned :class:`Pending`'s ``future``. ``received``: when the request was handed over
        (clock seconds; default now), the start of its ``tokenize`` phase. Raises NotReady, ContextLost,
        RequestError or QueueFull (each counted in ``errors_total``)."""
        received = self.clock.monotonic() if received is None else received
        with self._worker.arriving() as arrival:  # a batch being gathered waits for this one
            try:
                model = self.model(req.model)
                rows, truncated = self._rows(model, req)
                new_tokens = 0
                if model.task == "encoder" and req.max_new_tokens is not None:
                    raise RequestError(
                        f"max_new_tokens is for generators; {model.model_id} is an encoder (leave it out)"
                    )
                if model.task != "encoder":
                    new_tokens = model.limits.new_tokens if req.max_new_tokens is None else req.max_new_tokens
                    if not 1 <= new_tokens <= model.limits.new_tokens:
                        raise RequestError(
                            f"max_new_tokens {new_tokens} is outside 1..{model.limits.new_tokens} "
                            f"(new_tokens of {model.model_id})"
                        )
            except (RequestError, ContextLost, NotReady) as exc:
                if isinstance(exc, RequestError):
                    self._counters.rejected += 1
                self.metrics.error(_error_label(exc))
                raise
            prepared = self.clock.monotonic()
            job = Job(
                model_id=model.model_id,
                rows=rows,
                max_rows=model.limits.max_batch,
                mergeable=True,
                new_tokens=new_tokens,
                raw=req.raw,
            )
            try:
                future = self._worker.submit(job, arrival)
            except Exception as exc:
                self.metrics.error(_error_label(exc) if isinstance(exc, QueueFull) else "other")
                raise
        return Pending(model, rows, truncated, req.parse_secs, received, prepared, future)

    def collect(self, pending: Pending) -> dict[str, Any]:
        """Wait for ``pending``'s batch (at once when its future is answered already) and answer as
        :meth:`infer` does; the phases of the request are observed here. Raises the batch's error."""
        try:
            answer = pending.future.result()
        except Exception as exc:
            known = isinstance(exc, (QueueFull, DeviceOutOfMemory, ContextLost))
            self.metrics.error(_error_label(exc) if known else "other")
            raise
        model, rows, received, prepared = pending.model, pending.rows, pending.received, pending.prepared
        done = self.clock.monotonic()
        self.metrics.requests.inc()
        self.metrics.rows.inc(len(rows))
        self.metrics.latency.observe(max(0.0, done - received))
        result = answer.result
        queue_secs = max(0.0, answer.started - prepared)
        for phase, secs in (
            ("parse", pending.parse_secs),
            ("tokenize", prepared - received),
            ("queue", queue_secs),
            ("to_device", result.to_device_ms / 1000.0),
            ("forward", result.forward_ms / 1000.0),
            ("to_host", result.to_host_ms / 1000.0),
        ):
            if secs is not None:
                self.metrics.phase(phase, secs)
        return {
            "model": model.model_id,
            "task": model.task,
            "batch_size": len(rows),
            "seq_len": max(len(r) for r in rows),
            "input_tokens": sum(len(r) for r in rows),
            "truncated": pending.truncated,
            **result.outputs,
            "timing": {
                "prepare_ms": round((prepared - received) * 1000.0, 3),
                "queue_ms": round(queue_secs * 1000.0, 3),
                "to_device_ms": round(result.to_device_ms, 3),
                "forward_ms": round(result.forward_ms, 3),
                "to_host_ms": round(result.to_host_ms, 3),
                "total_ms": round((done - received) * 1000.0, 3),
            },
            "device_batch": {"requests": answer.batch_requests, "rows": answer.batch_rows},
        }

    def _execute(self, jobs: list[Job]) -> None:
        """One batch on the device thread: every job is answered (a result, or the batch's error)."""
        model = self.models[jobs[0].model_id]
        rows = merged_rows(jobs)
        started = self.clock.monotonic()
        block = self.cuda_wait.blocks(requests=len(jobs), waiting=self._worker.depth)
        try:
            if model.task == "encoder":
                results = run_merged(
                    model,
                    [j.rows for j in jobs],
                    device=self.device,
                    clock=self.clock,
                    raw=[j.raw for j in jobs],
                    graphs=self.graphs,
                    block_wait=block,
                )
            else:
                results = generate_merged(
                    model,
                    [(j.rows, j.new_tokens) for j in jobs],
                    device=self.device,
                    clock=self.clock,
                    block_wait=block,
                )
        except Exception as exc:
            error = self._batch_error(exc, model.model_id, len(jobs), rows)
            for job in jobs:
                job.future.set_exception(error)
            return
        self._counters.requests += len(jobs)
        self._counters.items += rows
        self._note_shape(model.model_id, rows, max(len(r) for j in jobs for r in j.rows), jobs[0].new_tokens)
        self.metrics.batch_rows.observe(rows)
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.forward.observe(results[0].forward_ms / 1000.0)
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(_Answer(result, started, len(jobs), rows))

    def _batch_error(self, exc: Exception, model_id: str, requests: int, rows: int) -> Exception:
        """What the requests of a failed batch get; device conditions are logged in ONE line, no traceback."""
        kind = classify(exc)
        if kind is DeviceErrorKind.ALLOC_FAILED:
            self._counters.out_of_memory += requests
            log.error(
                "%s on a request to %s (batch %d rows, %d request(s)): %s",
                OOM_TEXT, model_id, rows, requests, first_line(exc),
            )
            _empty_cache(self.device)
            error: Exception = DeviceOutOfMemory(
                f"{OOM_TEXT} running a batch of {rows} on {model_id} ({first_line(exc)})",
                hint="send smaller batches, or raise the agent's memory limit",
            )
        elif kind is DeviceErrorKind.CONTEXT_LOST:
            reason = f"CUDA context lost running a batch on {model_id}: {first_line(exc)}"
            self.context_lost(reason)
            error = ContextLost(f"agent {self.agent}: {reason}", hint="the agent is restarting")
        else:
            # An error the text does not place: if the context no longer answers, that was the cause.
            probed = self._watch.check(fresh_only=True) if self._watch is not None else None
            if probed is None:
                return exc
            self.context_lost(f"{probed} (after {first_line(exc)} on {model_id})")
            error = ContextLost(f"agent {self.agent}: {self.error}", hint="the agent is restarting")
        error.__cause__ = exc
        return error

    def _note_shape(self, model_id: str, rows: int, seq_len: int, new_tokens: int) -> None:
        """Keep the largest batch run on ``model_id`` (rows × padded length, then new tokens) since start:
        what ``/health`` reports as ``largest_batch`` (colo's usage history reads it)."""
        have = self._counters.largest.get(model_id)
        if have is None or (rows * seq_len, new_tokens) > (have[0] * have[1], have[2]):
            self._counters.largest[model_id] = (rows, seq_len, new_tokens)

    def context_lost(self, reason: str) -> None:
        """Mark the context unusable for good: log ``reason`` once and call ``on_context_lost`` once."""
        with self._state_lock:
            if self.status == "context_lost":
                return
            self.status = "context_lost"
            self.error = reason
        log.error("agent %s: %s; exiting to be restarted", self.agent, reason)
        self.on_context_lost(reason)

    def check_context(self) -> tuple[Status, str | None]:
        """Probe the context when ready: ``(status, error)`` for /health.

        A failed probe loses the context for good (:meth:`context_lost`); a probe still unanswered after
        ``probe_timeout_secs`` gives ``unresponsive`` (503, not sticky), and after ``hang_secs`` loses it.
        """
        if self.status == "ready" and self._watch is not None:
            reason, hung = self._watch.check_hung()
            if reason is not None:
                if hung == 0.0 or hung >= self.hang_secs:
                    self.context_lost(reason if hung == 0.0 else f"{reason}; unanswered for {hung:.0f} s")
                else:
                    return "unresponsive", reason
        return self.status, self.error

    def watch_context(self, interval_secs: float = 0.5) -> threading.Thread | None:
        """Probe the context every ``interval_secs`` on a daemon thread, so a broken context is found (and the
        agent leaves) within about a second even when nobody asks /health. Returns the thread (None on CPU:
        nothing to probe)."""
        if self._watch is None:
            return None

        def loop() -> None:
            while self.status != "context_lost":
                self.check_context()
                self.clock.sleep(interval_secs)

        thread = threading.Thread(target=loop, name=f"colo-agent-{self.agent}-watch", daemon=True)
        thread.start()
        return thread

    def inject_fault(self) -> None:
        """Fault hook (tests only, reached only when the server was started with the fault route): launch a
        kernel that fails a device-side assert on the device thread, so the context breaks for good."""
        try:
            self._worker.call(lambda: trigger_device_assert(self.device))
        except RuntimeError as exc:  # already broken, or the launch itself failed: the probe will tell
            log.warning("fault hook: %s", first_line(exc))

    @property
    def retry_after_secs(self) -> int:
        """What a 503 for a full queue tells the client to wait."""
        return RETRY_AFTER_SECS

    def metrics_text(self) -> bytes:
        """The Prometheus text of ``/metrics``."""
        self.metrics.queue_depth.set(self._worker.depth)
        graphs = self.graphs.snapshot()
        self.metrics.cuda_graphs.set(graphs.graphs)
        self.metrics.cuda_graph_pool_bytes.set(graphs.pool_bytes)
        return self.metrics.render()

    def close(self) -> None:
        """Stop taking requests (queued ones fail with QueueFull); the prepare pool's threads end once their
        work is done."""
        self._prepare.close()
        self._worker.close()

    # --- health ---------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What /health returns: status, models (weights, tokenizer), device, pid, memory counters."""
        status, error = self.check_context()
        with self._models_lock:
            models = [m.describe() for m in self.models.values()]
        return {
            "status": status,
            "agent": self.agent,
            "pid": os.getpid(),
            "device": self.device,
            "device_name": _device_name(self.device),
            "dtype": self.dtype or "per model",
            "matmul_precision": self.matmul_precision or "torch default",
            "models": models,
            "models_expected": [m for m, _ in self.specs],
            "warm_up": self.warm_up,
            "error": error,
            "uptime_secs": round(self.clock.monotonic() - self._started, 3),
            "ready_after_secs": None if self._ready_secs is None else round(self._ready_secs, 3),
            "requests": self._counters.requests,
            "items": self._counters.items,
            "rejected": self._counters.rejected,
            "out_of_memory": self._counters.out_of_memory,
            "largest_batch": {
                m: {"rows": r, "seq_len": q, "new_tokens": n} for m, (r, q, n) in sorted(self._counters.largest.items())
            },
            "queue_depth": self._worker.depth,
            "batch_wait_ms": self.batch_wait_ms,
            "max_queue": self.max_queue,
            "start": None if self.start is None else self.start.on_health(status == "ready"),
            "cuda_graphs": self.graphs.snapshot().to_dict(),
            **_device_memory_or_none(self.device, status),
        }


def _empty_cache(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:  # a broken context: the next request or probe reports it
            log.warning("could not empty the CUDA cache: %s", first_line(exc))


def _rss_only() -> dict[str, int | None]:
    """The device counters as None (no CUDA device, or one not to be asked), with the process RSS."""
    return {
        "memory_allocated_bytes": None,
        "memory_reserved_bytes": None,
        "max_memory_allocated_bytes": None,
        "max_memory_reserved_bytes": None,
        "rss_bytes": _rss_bytes(),
    }


def _device_memory_or_none(device: str, status: Status) -> dict[str, int | None]:
    """device_memory, except when the context is lost or unresponsive (CUDA calls could fail or hang): all
    None but RSS."""
    if status not in ("context_lost", "unresponsive"):
        try:
            return device_memory(device)
        except RuntimeError:
            pass
    return _rss_only()


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        try:
            return str(torch.cuda.get_device_name(device))
        except RuntimeError:  # a broken context
            return "unknown (CUDA error)"
    return "cpu"


def device_memory(device: str) -> dict[str, int | None]:
    """PyTorch's memory counters for ``device`` in bytes (allocated, reserved, their peaks); RSS on CPU."""
    import torch

    if device.startswith("cuda"):
        return {
            "memory_allocated_bytes": int(torch.cuda.memory_allocated(device)),
            "memory_reserved_bytes": int(torch.cuda.memory_reserved(device)),
            "max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
            "max_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
            "rss_bytes": _rss_bytes(),
        }
    return _rss_only()


def _rss_bytes() -> int | None:
    from colo.gpu.procs import rss_bytes

    return rss_bytes()
