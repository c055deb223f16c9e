"""The model memory database: what models (and agents' model sets) really took, with provenance.

One JSON file (default ``<state dir>/model_db.json``, or a path in the project)::

    {"version": 1,
     "models": [ {model, dtype, batch_size, seq_len, new_tokens, kind: measured|estimated, weights,
                  weights_bytes, context_bytes, allocated_peak_bytes, reserved_peak_bytes, nvml_peak_bytes,
                  overhead_bytes, samples, sample_hz, provenance: {gpu, gpu_uuid, driver, cuda, torch,
                  transformers, date, host, mps}} ],
     "agents": [ {agent, models: [[model, dtype, batch, seq, new], ...], nvml_peak_bytes, ... provenance} ],
     "observed": [ {agent, peak_bytes, limit_bytes, date, source} ]}

One model entry per model × dtype × batch × seq (× new tokens) × kind on each GPU model: a new measurement
replaces the old one for the same key. ``observed`` is where running agents' peaks go (the supervisor's
NVML samples) so a later ``colo tune`` can lower or raise limits from real usage.

Writes go through :func:`colo.files.write_atomic`. Nothing here imports torch.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from colo import units
from colo.errors import ConfigError
from colo.files import state_dir, write_atomic
from colo.spec.config import ColoConfig

DB_VERSION = 1
DB_FILENAME = "model_db.json"
EntryKind = Literal["measured", "estimated"]


@dataclass(frozen=True)
class Provenance:
    """Where and with what a number was obtained. ``date`` is ISO 8601 UTC."""

    gpu: str = ""
    gpu_uuid: str = ""
    driver: str = ""
    cuda: str = ""
    torch: str = ""
    transformers: str = ""
    date: str = ""
    host: str = ""
    mps: bool = False


@dataclass(frozen=True)
class ModelEntry:
    """One model's worst case. Sizes in bytes; ``nvml_peak_bytes`` is what nvidia-smi showed (measured) or
    would show (estimated). ``context_bytes``: NVML right after CUDA context creation, before weights.
    ``overhead_bytes``: NVML peak − PyTorch reserved peak (context + library workspaces)."""

    model: str
    dtype: str
    batch_size: int
    seq_len: int
    new_tokens: int
    kind: EntryKind
    nvml_peak_bytes: int
    weights_bytes: int
    weights: str = "random"  # "local" | "random"
    context_bytes: int | None = None
    allocated_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    overhead_bytes: int | None = None
    samples: int = 0
    sample_hz: float = 0.0
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def key(self) -> tuple[str, str, int, int, int, str, str]:
        return (self.model, self.dtype, self.batch_size, self.seq_len, self.new_tokens, self.kind, self.provenance.gpu)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelEntry:
        prov = Provenance(**data.get("provenance", {}))
        rest = {k: v for k, v in data.items() if k != "provenance"}
        return ModelEntry(**rest, provenance=prov)


@dataclass(frozen=True)
class AgentEntry:
    """An agent's model set loaded together in one process and run one request at a time, as the agent
    would; or a command agent (``command``: what ran and under which load), its process tree's NVML peak.
    ``models`` are ``(model, dtype, batch_size, seq_len, new_tokens)``."""

    agent: str
    models: tuple[tuple[str, str, int, int, int], ...]
    kind: EntryKind
    nvml_peak_bytes: int
    weights_bytes: int
    context_bytes: int | None = None
    allocated_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    samples: int = 0
    sample_hz: float = 0.0
    provenance: Provenance = field(default_factory=Provenance)
    command: str = ""  # a command agent: its argv and the load it was measured under ("" = colo's child)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.agent, self.models, self.kind, self.provenance.gpu)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = [list(m) for m in self.models]
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> AgentEntry:
        prov = Provenance(**data.get("provenance", {}))
        models = tuple((str(m[0]), str(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in data["models"])
        rest = {k: v for k, v in data.items() if k not in ("provenance", "models")}
        return AgentEntry(**rest, models=models, provenance=prov)


@dataclass(frozen=True)
class Observation:
    """A running agent's observed NVML peak (bytes) under its limit, for a later ``colo tune``."""

    agent: str
    peak_bytes: int
    limit_bytes: int | None
    date: str
    source: str = "supervisor"
    gpu: str = ""


class ModelDB:
    """The JSON model database. Load with :meth:`open`; change with ``put*``/``observe``; :meth:`save`."""

    def __init__(
        self,
        path: Path,
        models: Iterable[ModelEntry] = (),
        agents: Iterable[AgentEntry] = (),
        observed: Iterable[Observation] = (),
    ) -> None:
        self.path = path
        self._models: dict[tuple[Any, ...], ModelEntry] = {e.key: e for e in models}
        self._agents: dict[tuple[Any, ...], AgentEntry] = {e.key: e for e in agents}
        self._observed: list[Observation] = list(observed)

    # -- loading and saving ------------------------------------------------------------------------------

    @staticmethod
    def default_path(config: ColoConfig | None = None) -> Path:
        """``<state dir>/model_db.json`` (the config's ``state_dir`` when set)."""
        return state_dir(config.state_dir if config else None) / DB_FILENAME

    @classmethod
    def open_default(cls, config: ColoConfig | None = None) -> ModelDB:
        """The database in the state directory (empty when the file does not exist yet)."""
        return cls.open(cls.default_path(config))

    @classmethod
    def open(cls, path: str | Path) -> ModelDB:
        """Read ``path`` (a missing file is an empty database). Raises ConfigError for a corrupt file."""
        p = Path(path).expanduser()
        if not p.exists():
            return cls(p)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the model database ({exc})", source=str(p), hint="fix or remove the file"
            ) from exc
        if not isinstance(data, dict) or data.get("version") != DB_VERSION:
            raise ConfigError(
                f"not a colo model database of version {DB_VERSION}",
                source=str(p),
                field="version",
                hint="move it away; `colo profile` / `colo estimate --save` write a new one",
            )
        where = "models"
        try:
            models = [ModelEntry.from_dict(d) for d in data.get("models", [])]
            where = "agents"
            agents = [AgentEntry.from_dict(d) for d in data.get("agents", [])]
            where = "observed"
            observed = [Observation(**d) for d in data.get("observed", [])]
        except (TypeError, KeyError, ValueError, IndexError) as exc:
            raise ConfigError(f"invalid entry ({exc})", source=str(p), field=where) from exc
        return cls(p, models, agents, observed)

    def to_dict(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "version": DB_VERSION,
            "models": [e.to_dict() for e in self.models()],
            "agents": [e.to_dict() for e in self.agents()],
            "observed": [asdict(o) for o in self._observed],
        }

    def save(self) -> Path:
        """Write the database atomically; returns the path."""
        return write_atomic(self.path, json.dumps(self.to_dict(), indent=2) + "\n")

    # -- reading -----------------------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        """Model entries, sorted by model, dtype, shape, kind, GPU."""
        return sorted(self._models.values(), key=lambda e: e.key)

    def agents(self) -> list[AgentEntry]:
        return sorted(self._agents.values(), key=lambda e: (e.agent, e.kind, e.provenance.gpu, e.models))

    def lookup(
        self,
        model: str,
        *,
        dtype: str,
        batch_size: int,
        seq_len: int,
        new_tokens: int = 0,
        kind: EntryKind = "measured",
        gpu_name: str | None = None,
    ) -> ModelEntry | None:
        """The entry for exactly this worst case. With ``gpu_name``, one from that GPU model wins; else (or
        when there is none) the most recent from any GPU."""
        found = [
            e
            for e in self._models.values()
            if (e.model, e.dtype, e.batch_size, e.seq_len, e.new_tokens, e.kind)
            == (model, dtype, batch_size, seq_len, new_tokens, kind)
        ]
        return _best(found, gpu_name)

    def lookup_agent(
        self,
        agent: str,
        models: tuple[tuple[str, str, int, int, int], ...],
        *,
        kind: EntryKind = "measured",
        gpu_name: str | None = None,
    ) -> AgentEntry | None:
        """The agent-set entry for exactly these models and shapes (same GPU preferred, then most recent)."""
        found = [e for e in self._agents.values() if (e.agent, e.models, e.kind) == (agent, models, kind)]
        return _best(found, gpu_name)

    def overhead_for(self, gpu_name: str | None) -> tuple[int, str] | None:
        """Median measured overhead (NVML − reserved) on ``gpu_name`` and a description, or None."""
        values = [
            e.overhead_bytes
            for e in self._models.values()
            if e.kind == "measured"
            and e.overhead_bytes is not None
            and (gpu_name is None or e.provenance.gpu == gpu_name)
        ]
        if not values:
            return None
        median = int(statistics.median(values))
        where = gpu_name or "any GPU"
        return median, f"measured on {where} (median of {len(values)}: {units.format_size(median)})"

    # -- writing -----------------------------------------------------------------------------------------

    def put(self, entry: ModelEntry) -> None:
        """Add or replace the entry with the same key."""
        self._models[entry.key] = entry

    def put_agent(self, entry: AgentEntry) -> None:
        self._agents[entry.key] = entry

    def observe(self, obs: Observation, *, keep: int = 1000) -> None:
        """Record an agent's observed peak; the oldest beyond ``keep`` per agent are dropped."""
        self._observed.append(obs)
        mine = [o for o in self._observed if o.agent == obs.agent]
        if len(mine) > keep:
            drop = {id(o) for o in mine[: len(mine) - keep]}
            self._observed = [o for o in self._observed if id(o) not in drop]

    def forget(self, model: str) -> int:
        """Remove every entry of ``model``; returns how many."""
        keys = [k for k, e in self._models.items() if e.model == model]
        for k in keys:
            del self._models[k]
        return len(keys)


_E = TypeVar("_E", ModelEntry, AgentEntry)


def _best(found: list[_E], gpu_name: str | None) -> _E | None:
    if not found:
        return None
    if gpu_name:
        same = [e for e in found if e.provenance.gpu == gpu_name]
        if same:
            found = same
    return max(found, key=lambda e: e.provenance.date)
