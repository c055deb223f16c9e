"""The profiling child's protocol: what the parent asks, what the child answers. Pure data, stdlib only.

The parent (:mod:`colo.profiling.spawn`) starts ``python -m colo.profiling.child`` in a fresh process
and writes ONE JSON line (a :class:`ProfileRequest`) to its stdin. The child answers on stdout with one JSON
object per line, each with an ``"event"``:

1. ``{"event": "context", "pid": ...}`` — the CUDA context exists, no weights yet. With ``handshake`` the
   child then waits for one line on stdin: the parent samples the process's NVML memory (the context
   baseline) and writes ``go``.
2. ``{"event": "loaded", "weights_bytes": ...}`` — every model is built; same handshake.
3. ``{"event": "result", "ok": true, ...}`` — the worst-case run is over: a :class:`ChildResult`. On failure
   ``ok`` is false, with ``error`` and ``error_kind`` (``oom`` | ``config`` | ``error``).

Everything else the child or its libraries print goes to stderr. The parent samples NVML for the child's pid
during the whole run; the child measures what PyTorch sees (allocated and reserved peaks, weight bytes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from colo.errors import ProfileError
from colo.memory.worst_case import WorstCase

PROTOCOL_VERSION = 1
ErrorKind = Literal["oom", "config", "error"]


@dataclass(frozen=True)
class ProfileRequest:
    """What the child does: load ``models`` together on ``device``, then run each ``repeats`` times."""

    models: tuple[WorstCase, ...]
    device: str = "cuda"
    handshake: bool = True
    repeats: int = 1
    version: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["models"] = [asdict(m) for m in self.models]
        return json.dumps(data)

    @staticmethod
    def from_json(text: str) -> ProfileRequest:
        """Parse the request line. Raises ProfileError for anything malformed."""
        try:
            data = json.loads(text)
            if data.get("version") != PROTOCOL_VERSION:
                raise ValueError(f"protocol version {data.get('version')!r}, expected {PROTOCOL_VERSION}")
            models = tuple(WorstCase(**m) for m in data["models"])
            if not models:
                raise ValueError("no models")
            return ProfileRequest(
                models=models,
                device=str(data.get("device", "cuda")),
                handshake=bool(data.get("handshake", True)),
                repeats=max(int(data.get("repeats", 1)), 1),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProfileError(f"bad profiling request ({exc})") from exc


@dataclass(frozen=True)
class ModelRun:
    """What the child saw for one model. Bytes; ``secs`` of the worst-case runs."""

    model: str
    weights: str
    description: str
    weights_bytes: int
    allocated_peak_bytes: int
    reserved_peak_bytes: int
    tokens: int
    secs: float


@dataclass(frozen=True)
class ChildResult:
    """The child's final answer. Peaks cover loading and running (bytes; 0 on a CPU run)."""

    ok: bool
    pid: int
    device: str
    device_name: str = ""
    torch_version: str = ""
    transformers_version: str = ""
    cuda_version: str = ""
    weights_bytes: int = 0
    allocated_peak_bytes: int = 0
    reserved_peak_bytes: int = 0
    duration_secs: float = 0.0
    runs: tuple[ModelRun, ...] = field(default=())
    error: str = ""
    error_kind: ErrorKind | None = None

    def to_event(self) -> dict[str, Any]:
        data = asdict(self)
        data["runs"] = [asdict(r) for r in self.runs]
        data["event"] = "result"
        return data

    @staticmethod
    def from_event(data: dict[str, Any]) -> ChildResult:
        """Parse a ``result`` event. Raises ProfileError for a malformed one."""
        try:
            fields = {k: v for k, v in data.items() if k not in ("event", "runs")}
            runs = tuple(ModelRun(**r) for r in data.get("runs", []))
            return ChildResult(**fields, runs=runs)
        except TypeError as exc:
            raise ProfileError(f"malformed result from the profiling child ({exc})") from exc


def encode_event(event: str, **fields: Any) -> str:
    """One protocol line (no newline)."""
    return json.dumps({"event": event, **fields})


def decode_event(line: str) -> dict[str, Any] | None:
    """A protocol line as a dict, or None for a line that is not a protocol event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or "event" not in data:
        return None
    return data
