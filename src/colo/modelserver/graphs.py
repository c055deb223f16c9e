"""CUDA-graph replay of small encoder forwards: which batches qualify, when a shape is captured, how much memory
the graphs may hold, and what a failed capture does. No torch here: the device side is a :class:`GraphBackend`
(:class:`colo.modelserver.cuda_graphs.TorchGraphBackend` on CUDA; :class:`colo.modelserver.fake_graphs.
FakeGraphBackend` beside it for tests).

Why: a lone small request is launch-bound. bert-tiny's forward on 1 × 16 tokens is some 50 small kernels, each
paying a Python module call and a launch (1.96 ms eager on an H100, issue 22); a CUDA graph replays them all
with one launch.

**What qualifies** (:func:`graph_key`): an encoder (task ``encoder``) batch whose rows all have ONE length — no
padding, so the attention mask is all ones and the model is called with ``input_ids`` alone (transformers'
data-dependent mask checks, which break a capture, are skipped) — of at most :data:`MAX_GRAPH_ROWS` rows and
:data:`MAX_GRAPH_SEQ_LEN` ids. A graph is keyed by the exact ``(rows, seq_len)``.

**Capture** is lazy, on the device thread, the first time a shape is seen: the backend runs the shape eagerly
on a side stream a couple of times (lazy initialisation, workspaces), then captures it into the model's memory
pool (one pool per model, shared by all its graphs). **Replay** copies the batch's ids into the graph's static
input and replays. The static output is overwritten by the next replay of that graph — and, as the graphs of a
pool share its memory, possibly by the next replay of ANY graph of the model (a later capture may have put its
output where an earlier graph keeps its intermediates). So a caller uses the output (copies what it needs to
the host) before it runs another batch; the device thread runs one batch at a time, so replays never overlap.
That is what makes a shared pool safe in any replay order.

**Memory** (the plan's promise): the agent's MPS limit was sized for ONE worst-case batch, and graph pools hold
memory for good, on top of what the caching allocator keeps. All pools of an agent share one budget
(:func:`graph_budget_bytes`): at most :data:`DEFAULT_GRAPH_BUDGET_BYTES`, and at most
:data:`GRAPH_HEADROOM_FRACTION` of the room left after the worst-case warm-up (:func:`headroom_bytes`). Each
capture reports the bytes it added (the backend measures reserved memory before and after). A new shape is
captured only while the bytes held plus the most any one kept capture has added fit the budget, and at most
:data:`MAX_GRAPHS` graphs are held. A capture that passes the budget anyway is undone when its pool holds
nothing else (a model's first: it has no history to go by), and that model tries no shape as large (rows ×
seq_len) again; one that passes it in a pool shared with other graphs (which cannot give memory back without
dropping them) is kept, and is the agent's last capture.

**Failures are data**: a capture or replay that raises turns graphs off for that model — one log line, the
reason in ``/health`` — its graphs are dropped and their pool handed back to the device, and the batch runs
eagerly: a graph never fails a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from colo.clock import SYSTEM_CLOCK, Clock
from colo.modelserver.device_errors import first_line
from colo.modelserver.loading import LoadedModel
from colo.units import MIB

log = logging.getLogger(__name__)

#: The largest batch (rows) and sequence (ids) replayed from a graph; larger batches run eagerly.
MAX_GRAPH_ROWS = 8
MAX_GRAPH_SEQ_LEN = 128
#: The most graphs an agent holds, all models together (each first-seen shape costs a capture).
MAX_GRAPHS = 64
#: The most bytes all graph pools of an agent may hold, whatever the room left.
DEFAULT_GRAPH_BUDGET_BYTES = 64 * MIB
#: The share of the room left after the worst-case warm-up that graph pools may take (the rest stays for
#: fragmentation and what the caching allocator holds on other streams).
GRAPH_HEADROOM_FRACTION = 0.5

GraphKey = tuple[int, int]  # (rows, seq_len)


def shape_text(key: GraphKey) -> str:
    """``"8x128"``: how a shape is written in logs and ``/health``."""
    return f"{key[0]}x{key[1]}"


@dataclass(frozen=True)
class DeviceMemory:
    """The agent's device memory at one moment, in bytes: what PyTorch's caching allocator holds now and at its
    peak (``torch.cuda.memory_reserved`` / ``max_memory_reserved``), and what CUDA reports free to this process
    (``torch.cuda.mem_get_info``; under MPS, what is left of the client's pinned limit, its CUDA context
    counted)."""

    reserved_bytes: int
    peak_reserved_bytes: int
    free_bytes: int


class CapturedForward(Protocol):
    """One captured forward of one shape."""

    def replay(self, input_ids: Any) -> Any:
        """Copy ``input_ids`` (the graph's shape, on its device) into the static input, replay, and return the
        static output (the model's output object; overwritten by the next replay). Queues the work and returns:
        the caller synchronises."""
        ...


class GraphBackend(Protocol):
    """The device side of CUDA graphs: memory readings, pools, capture, and handing memory back."""

    def memory(self) -> DeviceMemory:
        """The device memory now."""
        ...

    def new_pool(self) -> object:
        """A new memory pool for one model's graphs (``torch.cuda.graph_pool_handle()``)."""
        ...

    def capture(self, module: Any, input_ids: Any, pool: object) -> tuple[CapturedForward, int]:
        """Warm ``module`` up on ``input_ids``' shape, capture ``module(input_ids=...)`` into ``pool``, and return
        the graph with the bytes the capture added to the device memory held. Raises what the device raises
        (out of memory, an operation a capture does not allow); then nothing of the capture is kept."""
        ...

    def release(self) -> None:
        """Hand cached memory nothing holds back to the device (the pools of dropped graphs among it)."""
        ...


def graph_key(
    rows: Sequence[Sequence[int]], *, max_rows: int = MAX_GRAPH_ROWS, max_seq_len: int = MAX_GRAPH_SEQ_LEN
) -> GraphKey | None:
    """``(rows, seq_len)`` when a batch may be replayed from a graph: 1..``max_rows`` rows, all of one length
    1..``max_seq_len`` (unpadded); else None."""
    if not rows or len(rows) > max_rows:
        return None
    width = len(rows[0])
    if not 0 < width <= max_seq_len or any(len(row) != width for row in rows):
        return None
    return (len(rows), width)


def headroom_bytes(memory: DeviceMemory, cap_bytes: int | None = None) -> int:
    """The room left for graph pools after the worst-case warm-up, in bytes: what CUDA reports free (under MPS,
    the rest of the pinned limit) less what the cache gave back since its peak (a worst-case batch takes it
    again); with PyTorch's allocator capped at ``cap_bytes`` (a GPU without MPS), at most the cap less the
    peak. Never negative."""
    room = memory.free_bytes - max(0, memory.peak_reserved_bytes - memory.reserved_bytes)
    if cap_bytes is not None:
        room = min(room, cap_bytes - memory.peak_reserved_bytes)
    return max(0, room)


def graph_budget_bytes(
    headroom: int, *, most_bytes: int = DEFAULT_GRAPH_BUDGET_BYTES, fraction: float = GRAPH_HEADROOM_FRACTION
) -> int:
    """The bytes all graph pools of an agent may hold: ``fraction`` of ``headroom``, at most ``most_bytes``."""
    return max(0, min(most_bytes, int(headroom * fraction)))


@dataclass(frozen=True)
class ModelGraphs:
    """One model's graphs at one moment: the shapes held, the bytes their pool added, why graphs are off for it
    (None: on), and the shape whose capture passed the budget alone (none as large is captured)."""

    shapes: tuple[GraphKey, ...]
    pool_bytes: int
    off_reason: str | None
    too_large: GraphKey | None = None  # a capture of this shape passed the budget: none as large is tried

    def to_dict(self) -> dict[str, Any]:
        return {
            "shapes": [shape_text(k) for k in self.shapes],
            "pool_bytes": self.pool_bytes,
            "off_reason": self.off_reason,
            "too_large": None if self.too_large is None else shape_text(self.too_large),
        }


@dataclass(frozen=True)
class GraphsSnapshot:
    """An agent's CUDA graphs at one moment (``cuda_graphs`` of ``/health``). ``enabled``: graphs may be used
    at all (``off_reason`` says why not: switched off, a CPU device); ``full``: why no new shape is captured any
    more (the budget or :data:`MAX_GRAPHS` reached), None while captures go on. ``captures`` / ``replays`` /
    ``failures`` count since start."""

    enabled: bool
    off_reason: str | None
    graphs: int
    pool_bytes: int
    budget_bytes: int
    full: str | None
    captures: int
    replays: int
    failures: int
    max_rows: int
    max_seq_len: int
    models: dict[str, ModelGraphs] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "off_reason": self.off_reason,
            "graphs": self.graphs,
            "pool_bytes": self.pool_bytes,
            "budget_bytes": self.budget_bytes,
            "full": self.full,
            "captures": self.captures,
            "replays": self.replays,
            "failures": self.failures,
            "max_rows": self.max_rows,
            "max_seq_len": self.max_seq_len,
            "models": {m: g.to_dict() for m, g in sorted(self.models.items())},
        }


@dataclass
class _Pool:
    """One model's pool and the graphs captured into it (device thread only; read under the lock). ``handle``
    None: a new pool for the next capture (torch may not take a dropped pool's handle again)."""

    handle: object | None = None
    graphs: dict[GraphKey, CapturedForward] = field(default_factory=dict)
    added_bytes: int = 0
    off_reason: str | None = None
    too_large: GraphKey | None = None

    def fits(self, key: GraphKey) -> bool:
        """Whether ``key`` is smaller (rows × seq_len) than the shape that passed the budget, if any."""
        return self.too_large is None or key[0] * key[1] < self.too_large[0] * self.too_large[1]


class EncoderGraphs:
    """The CUDA graphs of one agent's encoders (see the module docstring). :meth:`replay` runs on the device
    thread; :meth:`snapshot` may be called from any thread.

    ``backend`` None: graphs are off (``off_reason`` says why) and :meth:`replay` always answers None.
    """

    def __init__(
        self,
        backend: GraphBackend | None,
        *,
        budget_bytes: int = 0,
        off_reason: str | None = None,
        max_rows: int = MAX_GRAPH_ROWS,
        max_seq_len: int = MAX_GRAPH_SEQ_LEN,
        max_graphs: int = MAX_GRAPHS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._backend = backend
        self.budget_bytes = budget_bytes if backend is not None else 0
        self.off_reason = None if backend is not None else (off_reason or "off")
        self.max_rows = max_rows
        self.max_seq_len = max_seq_len
        self.max_graphs = max_graphs
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}
        self._largest_kept_bytes = 0  # the most one capture still held added: what the next may add
        self._full: str | None = None
        self._captures = 0
        self._replays = 0
        self._failures = 0

    @classmethod
    def off(cls, reason: str) -> EncoderGraphs:
        """Graphs off for the whole agent, for ``reason`` (what ``/health`` says)."""
        return cls(None, off_reason=reason)

    @property
    def enabled(self) -> bool:
        return self._backend is not None

    def replay(self, model: LoadedModel, rows: Sequence[Sequence[int]], input_ids: Any) -> Any | None:
        """``model``'s output for ``input_ids`` (the ``rows``, on the device, unpadded) replayed from its graph —
        captured now when the shape is new and the budget allows — or None: run the batch eagerly. Never raises
        for a graph's sake: a failure turns graphs off for ``model`` and answers None."""
        if self._backend is None or model.task != "encoder":
            return None
        key = graph_key(rows, max_rows=self.max_rows, max_seq_len=self.max_seq_len)
        if key is None:
            return None
        pool = self._pools.get(model.model_id)
        if pool is not None and pool.off_reason is not None:
            return None
        graph = pool.graphs.get(key) if pool is not None else None
        if graph is None:
            if pool is not None and not pool.fits(key):
                return None
            graph = self._capture(model, key, input_ids)
            if graph is None:
                return None
        try:
            out = graph.replay(input_ids)
        except Exception as exc:
            failed = f"replay of {shape_text(key)} failed: {first_line(exc)}"
        else:
            self._replays += 1
            return out
        del graph  # nothing may hold the graph when its pool is handed back
        self._failures += 1
        self._turn_off(model.model_id, failed)
        return None

    def _capture(self, model: LoadedModel, key: GraphKey, input_ids: Any) -> CapturedForward | None:
        """Capture ``key`` for ``model`` when the budget allows; None when it does not or the capture failed."""
        backend = self._backend
        assert backend is not None
        if self._full is not None:
            return None
        held, pool_bytes = self._held()
        if held >= self.max_graphs:
            self._fill(f"{held} graphs held (the most, MAX_GRAPHS)")
            return None
        if self.budget_bytes <= 0:
            self._fill("no room for graph pools (budget 0)")
            return None
        if pool_bytes + self._largest_kept_bytes > self.budget_bytes:
            self._fill(
                f"budget of {self.budget_bytes / MIB:.1f} MiB reached (pools hold {pool_bytes / MIB:.1f} MiB; "
                f"one capture has added up to {self._largest_kept_bytes / MIB:.1f} MiB)"
            )
            return None
        started = self._clock.monotonic()
        outcome = self._try_capture(backend, model, input_ids)
        if isinstance(outcome, str):
            self._failures += 1
            self._turn_off(model.model_id, f"capture of {shape_text(key)} failed: {outcome}")
            return None
        pool, graph, added = outcome
        del outcome  # the graph is referenced by name only (dropping it must free it)
        capture_ms = (self._clock.monotonic() - started) * 1000.0
        with self._lock:
            pool.graphs[key] = graph
            pool.added_bytes += added
            self._captures += 1
        held, pool_bytes = self._held()
        log.info(
            "%s: CUDA graph %s captured in %.1f ms (+%.1f MiB; pools %.1f of %.1f MiB, %d graph(s))",
            model.model_id, shape_text(key), capture_ms, added / MIB, pool_bytes / MIB, self.budget_bytes / MIB,
            held,
        )
        if pool_bytes <= self.budget_bytes:
            self._largest_kept_bytes = max(self._largest_kept_bytes, added)
            return graph
        if len(pool.graphs) == 1:  # the pool holds this graph alone: dropping it gives all of it back
            with self._lock:
                pool.graphs.clear()
                pool.added_bytes = 0
                pool.too_large = key
                pool.handle = None
            del graph
            self._release()
            log.info(
                "%s: CUDA graph %s dropped: it passed the budget of %.1f MiB; shapes as large run eagerly",
                model.model_id, shape_text(key), self.budget_bytes / MIB,
            )
            return None
        self._largest_kept_bytes = max(self._largest_kept_bytes, added)
        self._fill(f"budget of {self.budget_bytes / MIB:.1f} MiB reached (pools hold {pool_bytes / MIB:.1f} MiB)")
        return graph

    def _try_capture(
        self, backend: GraphBackend, model: LoadedModel, input_ids: Any
    ) -> tuple[_Pool, CapturedForward, int] | str:
        """(the model's pool, the graph, the bytes it added), or the first line of what the capture raised."""
        try:
            pool = self._pools.get(model.model_id)
            if pool is None:
                pool = _Pool()
                with self._lock:
                    self._pools[model.model_id] = pool
            if pool.handle is None:
                pool.handle = backend.new_pool()
            graph, added = backend.capture(model.module, input_ids, pool.handle)
        except Exception as exc:
            return first_line(exc)
        return pool, graph, added

    def _held(self) -> tuple[int, int]:
        """(graphs held, bytes their pools added), all models."""
        with self._lock:
            pools = list(self._pools.values())
            return sum(len(p.graphs) for p in pools), sum(p.added_bytes for p in pools)

    def _fill(self, reason: str) -> None:
        """No new shape from now on, for ``reason`` (logged once)."""
        if self._full is None:
            self._full = reason
            log.info("CUDA graphs: %s; new shapes run eagerly", reason)

    def _turn_off(self, model_id: str, reason: str) -> None:
        """Graphs off for ``model_id`` for good: its graphs dropped, their pool handed back, one log line."""
        with self._lock:
            pool = self._pools.setdefault(model_id, _Pool())
            pool.graphs.clear()
            pool.added_bytes = 0
            pool.off_reason = reason
        self._release()
        log.warning("%s: CUDA graphs off: %s; its batches run eagerly", model_id, reason)

    def _release(self) -> None:
        assert self._backend is not None
        try:
            self._backend.release()
        except Exception as exc:  # a broken context: the next batch or probe reports it
            log.warning("CUDA graphs: could not hand memory back: %s", first_line(exc))

    def snapshot(self) -> GraphsSnapshot:
        """The graphs now (for ``/health`` and ``/metrics``)."""
        with self._lock:
            models = {
                model_id: ModelGraphs(tuple(sorted(p.graphs)), p.added_bytes, p.off_reason, p.too_large)
                for model_id, p in self._pools.items()
            }
        return GraphsSnapshot(
            enabled=self.enabled,
            off_reason=self.off_reason,
            graphs=sum(len(m.shapes) for m in models.values()),
            pool_bytes=sum(m.pool_bytes for m in models.values()),
            budget_bytes=self.budget_bytes,
            full=self._full,
            captures=self._captures,
            replays=self._replays,
            failures=self._failures,
            max_rows=self.max_rows,
            max_seq_len=self.max_seq_len,
            models=models,
        )
