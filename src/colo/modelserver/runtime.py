"""The built-in agent's state: its models, readiness, and checked, serialised inference.

One :class:`AgentRuntime` per process. :meth:`AgentRuntime.load` builds every model of the agent, then runs a
warm-up forward on the device (the worst-case batch × sequence when asked, so the process's memory peak is
the one the plan was sized for); only then is the agent ready and ``/health`` answers 200. Requests run one
at a time under a lock: one batch in flight keeps the peak at one worst case, which is what the MPS limit
allows for.

Errors a request can cause: :class:`RequestError` (bad input, HTTP 422), :class:`NotReady` (503),
:class:`DeviceOutOfMemory` (507). Load failures leave the runtime ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from colo.errors import ColoError, UsageError
from colo.modelserver.inference import is_oom, run_batch, worst_case_rows
from colo.modelserver.loading import LoadedModel, load_model
from colo.spec.config import ModelSpec
from colo.units import MIB

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]
OOM_TEXT = "CUDA out of memory"


class RequestError(UsageError):
    """An inference request the agent will not run: unknown model, too large, ids outside the vocabulary."""


class NotReady(ColoError):
    """The agent is still loading (or failed to load)."""


class DeviceOutOfMemory(ColoError):
    """A request ran the device out of memory; the agent stays up and frees what it can."""


class LoadOutOfMemory(ColoError):
    """Loading or warming up ran the device out of memory: the agent process exits with code 3."""

    exit_code = 3


@dataclass(frozen=True)
class InferInput:
    """A checked request: exactly one of ``texts`` / ``input_ids``."""

    model: str | None = None
    texts: Sequence[str] | None = None
    input_ids: Sequence[Sequence[int]] | None = None
    max_new_tokens: int | None = None


@dataclass
class _Counters:
    requests: int = 0
    rejected: int = 0
    out_of_memory: int = 0
    items: int = 0


@dataclass
class AgentRuntime:
    """An agent's models on one device. Thread-safe: /health reads while a request or the load runs.

    ``loader`` builds one model (tests inject one); ``memory_probe`` returns device memory counters.
    """

    agent: str
    specs: Sequence[tuple[str, ModelSpec]]
    device: str
    dtype: str | None = None
    worst_case: bool = False
    loader: Callable[..., LoadedModel] = load_model
    clock: Callable[[], float] = time.monotonic
    status: Status = "loading"
    error: str | None = None
    models: dict[str, LoadedModel] = field(default_factory=dict)
    warm_up: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # one batch on the device at a time
    _models_lock: threading.Lock = field(default_factory=threading.Lock)  # /health never waits on a batch
    _counters: _Counters = field(default_factory=_Counters)
    _started: float = 0.0
    _ready_secs: float | None = None

    def __post_init__(self) -> None:
        self._started = self.clock()
        if not self.specs:
            raise ValueError(f"agent {self.agent} has no models")

    # --- loading -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Build every model, then warm up; on success the runtime is ``ready``.

        Raises LoadOutOfMemory (after logging a line with "CUDA out of memory") when the device runs out of
        memory; any other failure is re-raised. Either way the runtime is left ``failed`` with the reason.
        """
        step = ["loading", self.specs[0][0]]  # what was running when something failed
        try:
            for model_id, spec in self.specs:
                step[1] = model_id
                loaded = self.loader(model_id, spec, device=self.device, dtype=self.dtype, clock=self.clock)
                with self._models_lock:
                    self.models[model_id] = loaded
            step[0] = "warming up"
            self._warm_up(step)
        except Exception as exc:
            self.status = "failed"
            if is_oom(exc):
                self.error = f"{OOM_TEXT} while {step[0]} {step[1]}: {exc}"
                log.error("%s", self.error)
                raise LoadOutOfMemory(self.error, hint="the agent's MPS memory limit is too low for it") from exc
            self.error = f"{type(exc).__name__} while {step[0]} {step[1]}: {exc}"
            log.error("%s", self.error)
            raise
        self._ready_secs = self.clock() - self._started
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
            log.info(
                "%s: warm-up %d×%d on %s took %.1f ms",
                model_id,
                len(rows),
                len(rows[0]),
                self.device,
                result.forward_ms,
            )
        self.warm_up = "worst case (batch × max_seq_len)" if self.worst_case else "one short row"

    # --- requests -----------------------------------------------------------------------------------------

    def _model(self, model_id: str | None) -> LoadedModel:
        if self.status != "ready":
            raise NotReady(f"agent {self.agent} is {self.status}" + (f": {self.error}" if self.error else ""))
        if model_id is None:
            return self.models[self.specs[0][0]]
        if model_id not in self.models:
            raise RequestError(f"model {model_id!r} is not served here (models: {', '.join(self.models)})")
        return self.models[model_id]

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
        """Check ``req`` against the model's limits and run it; a JSON-ready answer with timings in ms.

        Raises NotReady, RequestError, or DeviceOutOfMemory (the cache is emptied and the agent stays up).
        """
        received = self.clock()
        try:
            model = self._model(req.model)
            rows, truncated = self._rows(model, req)
            new_tokens = 0
            if model.task != "encoder":
                new_tokens = model.limits.new_tokens if req.max_new_tokens is None else req.max_new_tokens
                if not 1 <= new_tokens <= model.limits.new_tokens:
                    raise RequestError(
                        f"max_new_tokens {new_tokens} is outside 1..{model.limits.new_tokens} "
                        f"(new_tokens of {model.model_id})"
                    )
        except RequestError:
            self._counters.rejected += 1
            raise
        prepared = self.clock()
        with self._lock:
            started = self.clock()
            try:
                result = run_batch(model, rows, device=self.device, max_new_tokens=new_tokens, clock=self.clock)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                self._counters.out_of_memory += 1
                log.error("%s on a request to %s (batch %d): %s", OOM_TEXT, model.model_id, len(rows), exc)
                _empty_cache(self.device)
                raise DeviceOutOfMemory(
                    f"{OOM_TEXT} running a batch of {len(rows)} on {model.model_id}",
                    hint="send smaller batches, or raise the agent's memory limit",
                ) from exc
            self._counters.requests += 1
            self._counters.items += len(rows)
        done = self.clock()
        return {
            "model": model.model_id,
            "task": model.task,
            "batch_size": len(rows),
            "seq_len": max(len(r) for r in rows),
            "truncated": truncated,
            **result.outputs,
            "timing": {
                "prepare_ms": round((prepared - received) * 1000.0, 3),
                "queue_ms": round((started - prepared) * 1000.0, 3),
                "forward_ms": round(result.forward_ms, 3),
                "total_ms": round((done - received) * 1000.0, 3),
            },
        }

    # --- health ---------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What /health returns: status, models (weights, tokenizer), device, pid, memory counters."""
        with self._models_lock:
            models = [m.describe() for m in self.models.values()]
        return {
            "status": self.status,
            "agent": self.agent,
            "pid": os.getpid(),
            "device": self.device,
            "device_name": _device_name(self.device),
            "dtype": self.dtype or "per model",
            "models": models,
            "models_expected": [m for m, _ in self.specs],
            "warm_up": self.warm_up,
            "error": self.error,
            "uptime_secs": round(self.clock() - self._started, 3),
            "ready_after_secs": None if self._ready_secs is None else round(self._ready_secs, 3),
            "requests": self._counters.requests,
            "items": self._counters.items,
            "rejected": self._counters.rejected,
            "out_of_memory": self._counters.out_of_memory,
            **device_memory(self.device),
        }


def _empty_cache(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(device))
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
    return {
        "memory_allocated_bytes": None,
        "memory_reserved_bytes": None,
        "max_memory_allocated_bytes": None,
        "max_memory_reserved_bytes": None,
        "rss_bytes": _rss_bytes(),
    }


def _rss_bytes() -> int | None:
    from colo.gpu.procs import rss_bytes

    return rss_bytes()
