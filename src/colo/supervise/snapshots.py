"""Frozen snapshots of agents and events, and :class:`SystemSnapshot` (GPUs + MPS + agents + plan at one
moment): what the supervisor hands to the API, the CLI and the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from colo.gpu.poller import GpuState
from colo.supervise.state import AgentState

if TYPE_CHECKING:
    from colo.plan.types import Plan
    from colo.spec.config import ColoConfig


class EventKind(StrEnum):
    """What happened to an agent or a GPU."""

    STARTED = "started"  # process spawned
    READY = "ready"  # health check passed -> RUNNING
    EXITED = "exited"  # process ended (code or signal in detail)
    OOM = "out_of_memory"  # the process reported CUDA out-of-memory (its MPS limit)
    MPS_FAULT = "mps_fault"  # the GPU's MPS server went to FAULT
    RESTARTED = "restarted"  # started again by policy, API, apply or fault recovery
    FATAL = "fatal"  # gave up: crash loop or spawn failure
    STOPPED = "stopped"  # stopped on request
    ADOPTED = "adopted"  # a live process re-adopted after an orchestrator restart
    APPLIED = "applied"  # a new plan was applied
    UNHEALTHY = "unhealthy"  # health checks failing
    DAEMON = "mps_daemon"  # an MPS daemon started, stopped or was restarted
    MPS_MODE = "mps_mode"  # a GPU runs MPS or not (policy.mps), or switched (its agents restart, one by one)
    ROLLED_BACK = "rolled_back"  # a tuned limit ran out of memory: the agent's old limit was restored


#: Records an event: (kind, agent, message, gpu).
EventSink = Callable[[EventKind, str | None, str, str | None], object]


@dataclass(frozen=True)
class Event:
    """One event. ``time`` is wall-clock seconds since the epoch (for people); ``agent`` may be None."""

    seq: int
    time: float
    kind: EventKind
    agent: str | None
    message: str
    gpu: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


@dataclass(frozen=True)
class AgentStatus:
    """One agent at one moment: state, process, placement, memory (bytes), restarts, last error.

    ``last_error`` is colo's reason (``exit code 1``, ``not ready: ...``); ``last_error_line`` is the agent's
    own last word, the last non-empty line of its log when its process last failed (e.g.
    ``ModuleNotFoundError: No module named 'torch'``), cleared once it is RUNNING again.

    ``mps_planned`` is what its plan says (an MPS client of its GPU's server, or time-sliced); ``mps_client``
    what the last GPU reading showed (NVML's MPS process list, nvidia-smi type ``M+C``): None until its process
    holds a CUDA context (``colo.supervise.recovery.membership``)."""

    name: str
    state: AgentState
    pid: int | None
    gpu: str | None  # GpuSlot.key, e.g. "local:0"
    gpu_uuid: str | None
    limit_bytes: int
    requirement_bytes: int
    priority: str
    restarts: int
    memory_used_bytes: int | None = None
    memory_peak_bytes: int | None = None
    last_error: str | None = None
    last_error_line: str | None = None  # the last line of its log when it last failed (e.g. the exception)
    since: float | None = None  # wall-clock time of the last state change
    models: tuple[str, ...] = field(default_factory=tuple)
    mps_planned: bool | None = None  # its plan runs it as an MPS client (None: not known, e.g. left out)
    mps_client: bool | None = None  # NVML lists its process as an MPS client (None: no CUDA context seen yet)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["models"] = list(self.models)
        return d


@dataclass(frozen=True)
class Shape:
    """The largest batch a built-in agent ran on one model (``rows`` × ``seq_len`` tokens, plus ``new_tokens``
    generated), as its ``/health`` reports it since the process started."""

    model: str
    rows: int
    seq_len: int
    new_tokens: int = 0

    def covers(self, rows: int, seq_len: int, new_tokens: int = 0) -> bool:
        """Whether this batch was at least that shape."""
        return self.rows >= rows and self.seq_len >= seq_len and self.new_tokens >= new_tokens

    def text(self) -> str:
        return f"{self.rows} × {self.seq_len}" + (f" + {self.new_tokens} new" if self.new_tokens else "")


@dataclass(frozen=True)
class UsageSample:
    """One agent over one history window (wall-clock ``start``..``end``): its GPU memory high-water mark
    (NVML, its process tree, bytes) over ``polls`` readings, its limit then, its GPU, the largest batch per
    model it had run by then (built-in agents; empty for a command agent), the out-of-memory errors seen
    in the window and the requests it answered in it (None: a command agent, unknown)."""

    agent: str
    start: float
    end: float
    peak_bytes: int
    limit_bytes: int
    polls: int
    gpu: str | None = None
    shapes: tuple[Shape, ...] = ()
    oom: int = 0
    requests: int | None = None  # requests it answered in the window (built-in agent's /health); None unknown

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [asdict(x) for x in self.shapes]
        return d


@dataclass(frozen=True)
class RecoverySummary:
    """One finished MPS recovery of a GPU (``colo.supervise.recovery.mps_recovery``): what triggered it, seconds from the
    failed part last seen healthy to detection (``detect_secs``, an upper bound; None unknown) and from
    detection to every agent RUNNING again (``recover_secs``), whether the daemon was restarted, and whether
    every agent came back (``ok``)."""

    gpu_uuid: str
    trigger: str
    detect_secs: float | None
    recover_secs: float
    daemon_restarted: bool
    ok: bool


@dataclass(frozen=True)
class SystemSnapshot:
    """The running system at one moment, published by the supervisor once per poll (and after each action):
    the GPUs and their MPS daemons/servers/clients (``gpu``, read once per poll by the one poller of this
    node), every agent (placed ones, then those left out), the plan and the configuration in force.

    ``taken_at``: monotonic seconds of the GPU reading. ``plan`` is None before the first plan exists.
    """

    config: ColoConfig
    plan: Plan | None
    agents: tuple[AgentStatus, ...]
    gpu: GpuState
    taken_at: float = 0.0
    recoveries: tuple[RecoverySummary, ...] = ()
    usage: tuple[UsageSample, ...] = ()  # each agent's last finished history window
    usage_rows: int = 0  # rows in the usage history

    def agent(self, name: str) -> AgentStatus:
        """One agent's status. Raises KeyError for an agent not in the snapshot."""
        for s in self.agents:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did. ``restarted``: queued for a rolling restart (one at a time)."""

    restarted: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "restarted": list(self.restarted),
            "started": list(self.started),
            "stopped": list(self.stopped),
            "unchanged": list(self.unchanged),
            "left_out": list(self.left_out),
        }
