"""The user's configuration, ``colo.yaml``, as pydantic v2 models.

Sizes are written with units in the file (``memory: 1.5GiB``) and held as integer bytes in fields whose
Python names end in ``_bytes`` (the file keeps the short key through an alias). ``colo schema`` prints the
JSON Schema of :class:`ColoConfig`; ``docs/colo.schema.json`` is that output.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from colo import units

Priority = Literal["high", "medium", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "medium", "low")
DType = Literal["float32", "float16", "bfloat16"]
Task = Literal["encoder", "generator", "seq2seq"]
#: Whether a GPU runs MPS: ``auto`` (only with 2+ agents placed on it), ``on`` (always), ``off`` (never).
MpsMode = Literal["auto", "on", "off"]
MPS_MODES: tuple[MpsMode, ...] = ("auto", "on", "off")


def _with_unit_schema(unit_re: str, examples: list[str], bare: str, bare_unit: str, description: str) -> dict[str, Any]:
    """The JSON schema of a quantity written as a string with a unit (``unit_re`` after the number) or as a bare
    number (``bare``: JSON type ``integer`` or ``number``, counted in ``bare_unit``)."""
    return {
        "anyOf": [
            {"type": "string", "pattern": rf"^\s*\d+(\.\d+)?\s*{unit_re}\s*$", "examples": examples},
            {"type": bare, "minimum": 0, "description": bare_unit},
        ],
        "description": description,
    }


_SIZE_SCHEMA = _with_unit_schema(
    "(B|[KMGT]i?B|[KMGT])",
    ["512MiB", "1.5GiB"],
    "integer",
    "bytes",
    "A size with a unit: KiB/MiB/GiB/TiB (binary), KB/MB/GB/TB (SI), or MPS's K/M/G/T (binary).",
)


def _size(value: Any) -> int:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a size; write a finite number with a unit, such as '24GiB'")
        raise ValueError(f"{value!r} has no unit; write e.g. '{value:g}GiB'")
    if isinstance(value, str | int):
        return units.parse_size(value)
    raise ValueError("a size must be a string with a unit, such as '512MiB' or '1.5GiB'")


Bytes = Annotated[int, BeforeValidator(_size), WithJsonSchema(_SIZE_SCHEMA)]

_DURATION_SCHEMA = _with_unit_schema(
    "(ms|s|m|min|h|d|w)?",
    ["90s", "7d"],
    "number",
    "seconds",
    "A duration: a number with ms, s, m (min), h, d or w (a bare number is seconds).",
)


def _duration(value: Any) -> float:
    if isinstance(value, str | int | float):
        return units.parse_duration(value)
    raise ValueError("a duration must be a number with a unit, such as '90s' or '7d'")


Seconds = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


_MARGIN_RE = re.compile(
    r"^\s*(?:(?P<pct>\d+(?:\.\d+)?)\s*%)?\s*(?:,?\s*(?:at least|min(?:imum)?|>=)\s*(?P<min>[^,]+?))?\s*$",
    re.IGNORECASE | re.ASCII,
)


class Margin(_Strict):
    """Safety margin: ``max(requirement × percent / 100, at_least_bytes)``.

    Written as ``"50%"``, ``"0.5GiB"`` (a fixed amount), ``"50%, at least 512MiB"``, or as an object.
    """

    percent: float = Field(0.0, ge=0, le=1000, description="Margin as a percentage of the requirement.")
    at_least_bytes: Bytes = Field(0, alias="at_least", description="Lower bound (or fixed amount) of the margin.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                raise ValueError("empty margin; write e.g. '50%', '512MiB' or '50%, at least 512MiB'")
            if "%" not in text:
                try:
                    return {"percent": 0.0, "at_least": units.parse_size(text)}
                except ValueError as exc:
                    raise ValueError(
                        f"{value!r} is not a margin; write '50%', '512MiB' or '50%, at least 512MiB' ({exc})"
                    ) from exc
            m = _MARGIN_RE.match(text)
            if not m or m.group("pct") is None:
                raise ValueError(
                    f"{value!r} is not a margin; write '50%', '512MiB' or '50%, at least 512MiB'"
                )
            out: dict[str, Any] = {"percent": float(m.group("pct"))}
            if m.group("min"):
                out["at_least"] = m.group("min").strip()
            return out
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a margin; write e.g. '50%', '512MiB' or '50%, at least 512MiB'")
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"{value!r} has no unit; write e.g. '50%' or '{value:g}GiB'")
        return value

    def margin_bytes(self, requirement_bytes: int) -> int:
        """The margin for an agent that needs ``requirement_bytes``."""
        by_ratio = -(-int(requirement_bytes * self.percent * 1000) // 100_000)  # ceil, integer arithmetic
        return max(by_ratio, self.at_least_bytes)

    def describe(self) -> str:
        parts = []
        if self.percent:
            parts.append(f"{self.percent:g}%")
        if self.at_least_bytes or not parts:
            size = units.format_size_exact(self.at_least_bytes)
            parts.append(f"at least {size}" if parts else size)
        return ", ".join(parts)


class GpuInventory(_Strict):
    """GPUs to plan for when no GPU is at hand: ``count`` GPUs of ``memory`` each on ``node``."""

    node: str = Field("local", description="Node (host) name; several nodes make a cluster inventory.")
    name: str = Field("GPU", description="Model name, e.g. 'NVIDIA GeForce RTX 3090'.")
    memory_bytes: Bytes = Field(alias="memory", description="Memory per GPU, e.g. '24GiB'.")
    count: int = Field(1, ge=1, le=4096, strict=True)
    labels: dict[str, str] = Field(default_factory=dict, description="Node labels (rendering for Kubernetes).")
    mps: MpsMode | None = Field(
        None, description="Overrides policy.mps for the GPUs of this row: auto | on | off (default: policy.mps)."
    )

    @field_validator("node")
    @classmethod
    def _node_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a node name (letters, digits, '_', '.', '-'; up to 63)")
        return v

    @field_validator("memory_bytes")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < units.MIB * 256:
            raise ValueError(f"{units.format_size(v)} is too small for a GPU; is the unit right?")
        return v


class ModelSpec(_Strict):
    """One model: a Hugging Face id (the key) or a local path, and its worst-case shape."""

    path: str | None = Field(None, description="Local directory with the weights; else the key is a HF id.")
    dtype: DType = "float32"
    memory_bytes: Bytes | None = Field(
        None, alias="memory", description="Declared GPU memory requirement (else from the model database)."
    )
    batch_size: int = Field(1, ge=1, le=65536, strict=True, description="Largest batch the agent sends (worst case).")
    max_seq_len: int = Field(512, ge=1, le=1_048_576, strict=True, description="Longest input in tokens (worst case).")
    new_tokens: int = Field(64, ge=0, le=1_048_576, strict=True, description="Generators: tokens generated per request.")
    task: Task | None = Field(None, description="encoder | generator | seq2seq; default from the catalog.")


class HealthCheck(_Strict):
    """How the supervisor knows an agent is ready: RUNNING only after this passes."""

    type: Literal["http", "tcp", "command", "none"] = "none"
    url: str | None = Field(None, description="http: GET this URL; 2xx is healthy.")
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, strict=True, description="tcp: connect to host:port.")
    command: list[str] | None = Field(None, description="command: exit 0 is healthy.")
    interval_secs: float = Field(5.0, gt=0, le=3600)
    timeout_secs: float = Field(2.0, gt=0, le=600)
    start_secs: float = Field(1.0, ge=0, le=3600, description="type none: up this long counts as ready.")
    startup_timeout_secs: float = Field(300.0, gt=0, le=86400, description="Give up on readiness after this.")
    failures_before_restart: int = Field(3, ge=1, le=1000, strict=True)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0..65535
        except ValueError as exc:
            raise ValueError(f"{v!r} has a bad port ({exc})") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL; write e.g. 'http://127.0.0.1:9001/health'")
        if any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError(f"{v!r} contains spaces or control characters; percent-encode them")
        return v

    @field_validator("command")
    @classmethod
    def _health_argv(cls, v: list[str] | None) -> list[str] | None:
        for arg in v or []:
            if "\x00" in arg:
                raise ValueError(f"argument {arg!r} contains a NUL byte, which no command line can carry")
        return v

    @model_validator(mode="after")
    def _needs_target(self) -> HealthCheck:
        if self.type == "http" and not self.url:
            raise ValueError("an http health check needs 'url', e.g. 'http://127.0.0.1:9001/health'")
        if self.type == "tcp" and self.port is None:
            raise ValueError("a tcp health check needs 'port'")
        if self.type == "command" and not self.command:
            raise ValueError("a command health check needs 'command' (an argv list)")
        return self


class RestartPolicy(_Strict):
    """When and how often an exited agent is started again (capped exponential backoff)."""

    policy: Literal["always", "on-failure", "never"] = "on-failure"
    max_retries: int = Field(5, ge=0, le=10_000, strict=True, description="Failed starts in a row before FATAL.")
    backoff_initial_secs: float = Field(1.0, ge=0, le=3600)
    backoff_max_secs: float = Field(60.0, ge=0, le=86400)
    stop_wait_secs: float = Field(10.0, ge=0, le=3600, description="Stop signal to SIGKILL.")
    stop_signal: Literal["TERM", "INT", "QUIT", "HUP"] = "TERM"


class ProfileLoad(_Strict):
    """How ``colo profile`` drives a command agent while it samples the agent's GPU memory: ``concurrency``
    clients send ``method path`` (JSON ``body``) back to back, ``requests`` in all or for ``duration_secs``."""

    method: Literal["GET", "POST"] = "POST"
    path: str = Field("/v1/chat/completions", description="Request path, e.g. /v1/chat/completions.")
    body: dict[str, Any] | None = Field(None, description="JSON body of every request.")
    url: str | None = Field(None, description="Base URL; default http://127.0.0.1:<port>.")
    concurrency: int = Field(1, ge=1, le=256, strict=True, description="Clients sending at the same time.")
    requests: int | None = Field(None, ge=1, le=1_000_000, strict=True, description="Requests in all (default 2 per client).")
    duration_secs: float | None = Field(None, gt=0, le=86400, description="Send for this long instead.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a request path; write e.g. '/v1/chat/completions'")
        return v

    @model_validator(mode="after")
    def _one_bound(self) -> ProfileLoad:
        if self.requests is not None and self.duration_secs is not None:
            raise ValueError("give 'requests' or 'duration_secs', not both")
        return self


class AgentSpec(_Strict):
    """An agent: one process that loads ``models`` together, run under one MPS limit."""

    models: list[str] = Field(min_length=1, description="Model ids (keys of 'models'), loaded in one process.")
    priority: Priority = "medium"
    margin: Margin | None = Field(None, description="Overrides policy.margin for this agent.")
    gpu: int | str | None = Field(None, description="Pin: GPU index, 'node:index', or a GPU UUID.")
    node: str | None = Field(None, description="Pin to a node of the inventory.")
    command: list[str] | None = Field(None, description="argv; default: colo's built-in model agent.")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    port: int | None = Field(None, ge=1, le=65535, strict=True, description="Port the agent serves on (built-in agent).")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Built-in agent: longest a batch waits to merge concurrent requests (ms)."
    )
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "high",
        description=(
            "Built-in agent: how float32 matrix multiplies run (torch.set_float32_matmul_precision): 'high' "
            "on TF32 tensor cores (10-bit mantissa; the default), 'highest' in full float32, 'medium' in bfloat16."
        ),
    )
    health: HealthCheck = Field(default_factory=HealthCheck)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    profile: ProfileLoad | None = Field(None, description="Command agents: the load `colo profile` measures under.")

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not v[0].strip()):
            raise ValueError("command must be a non-empty argv list, e.g. ['python', 'serve.py']")
        for arg in v or []:
            if "\x00" in arg:
                raise ValueError(f"argument {arg!r} contains a NUL byte, which no command line can carry")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if key.startswith("CUDA_MPS_"):
                raise ValueError(f"{key} is set by colo from the plan; remove it from env")
            if "\x00" in v[key]:
                raise ValueError(f"the value of {key} contains a NUL byte, which no environment can carry")
        return v

    @model_validator(mode="after")
    def _profile_needs_command(self) -> AgentSpec:
        if self.profile is not None and self.command is None:
            raise ValueError("'profile' applies to agents with a 'command' (the built-in agent is profiled by model)")
        if self.profile is not None and self.profile.url is None and self.port is None:
            raise ValueError("'profile' needs the agent's 'port' (or a 'url' in 'profile')")
        return self

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for m in v:
            if m in seen:
                raise ValueError(f"model {m!r} is listed twice")
            seen.add(m)
        return v


class PriorityClass(_Strict):
    """What a priority means to MPS."""

    client_priority: Literal[0, 1] = Field(0, description="CUDA_MPS_CLIENT_PRIORITY: 0 normal, 1 below normal.")
    active_thread_pct: int = Field(100, ge=1, le=100, strict=True, description="CUDA_MPS_ACTIVE_THREAD_PERCENTAGE.")


def _default_priorities() -> dict[Priority, PriorityClass]:
    return {
        "high": PriorityClass(client_priority=0, active_thread_pct=100),
        "medium": PriorityClass(client_priority=0, active_thread_pct=100),
        "low": PriorityClass(client_priority=1, active_thread_pct=50),
    }


class Policy(_Strict):
    """How requirements become limits and limits become placements."""

    margin: Margin = Field(default_factory=lambda: Margin(percent=50.0, at_least_bytes=512 * units.MIB))
    round_to_bytes: Bytes = Field(128 * units.MIB, alias="round_to", description="Limits rounded up to this.")
    priorities: dict[Priority, PriorityClass] = Field(default_factory=_default_priorities)
    max_clients_per_gpu: int = Field(48, ge=1, le=60, strict=True, description="MPS client processes per GPU (48; <=60).")
    allow_oversubscription: bool = Field(False, description="Allow limits to add up past a GPU's memory.")
    placement: Literal["binpack", "spread"] = "binpack"
    reserve_per_gpu_bytes: Bytes = Field(0, alias="reserve_per_gpu", description="Kept free on every GPU.")
    memory_source: Literal["declared", "db"] = Field(
        "declared", description="declared: the models' 'memory'; db: measured/estimated values first."
    )
    history_window_secs: Seconds = Field(
        10.0,
        alias="history_window",
        description="Usage history: one row per agent per window (its GPU memory high-water mark, its largest"
        " request shape).",
    )
    history_retention_secs: Seconds = Field(
        7 * 86400.0, alias="history_retention", description="Usage history older than this is pruned."
    )
    history_max_rows: int = Field(
        200_000, ge=100, strict=True, description="Usage history rows kept at most (the oldest are pruned)."
    )
    launcher: Literal["fork", "spawn"] = Field(
        "fork",
        description="fork: built-in agents are forked from a pre-imported launcher (fast restarts); spawn: a"
        " fresh interpreter per agent. `command:` agents are always spawned.",
    )

    mps: MpsMode = Field(
        "auto",
        description="Where MPS runs: auto (a GPU with 2+ agents; a lone agent runs ~13-15% faster time-sliced),"
        " on (every GPU with an agent), off (none: plain time-slicing). Per GPU: gpus[].mps.",
    )
    @field_validator("history_window_secs")
    @classmethod
    def _window(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError("history_window must be at least 1s (the GPUs are read once a second)")
        return v

    @field_validator("priorities")
    @classmethod
    def _all_priorities(cls, v: dict[Priority, PriorityClass]) -> dict[Priority, PriorityClass]:
        merged = _default_priorities()
        merged.update(v)
        return merged


class ApiSettings(_Strict):
    """Where the orchestrator API listens."""

    host: str = "127.0.0.1"
    port: int = Field(8014, ge=1, le=65535, strict=True)
    open_reads: bool = Field(True, description="GET routes without a token (mutations always need one).")


class ColoConfig(_Strict):
    """A colo.yaml file."""

    version: Literal[1] = 1
    gpus: Literal["auto"] | list[GpuInventory] = Field(
        "auto", description="'auto' (NVML at run time) or an inventory to plan for."
    )
    models: dict[str, ModelSpec]
    agents: dict[str, AgentSpec]
    policy: Policy = Field(default_factory=Policy)
    state_dir: str | None = Field(None, description="Where colo keeps state (default ~/.local/state/colo).")
    api: ApiSettings = Field(default_factory=ApiSettings)

    @field_validator("gpus")
    @classmethod
    def _some_gpus(cls, v: Literal["auto"] | list[GpuInventory]) -> Literal["auto"] | list[GpuInventory]:
        if isinstance(v, list) and not v:
            raise ValueError("no GPUs listed; list at least one (e.g. '[{memory: 24GiB}]') or write 'gpus: auto'")
        return v

    @field_validator("agents")
    @classmethod
    def _agent_names(cls, v: dict[str, AgentSpec]) -> dict[str, AgentSpec]:
        if not v:
            raise ValueError("no agents; add at least one under 'agents:'")
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r} is not an agent name (letters, digits, '_', '.', '-'; up to 63)")
        return v

    @field_validator("models")
    @classmethod
    def _model_keys(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for key in v:
            if not key.strip():
                raise ValueError("a model id is empty")
        return v

    def margin_for(self, agent: str) -> Margin:
        """The margin policy that applies to ``agent`` (its override wins)."""
        return self.agents[agent].margin or self.policy.margin
