"""The seed system's JSON files, kept interchangeable: ``model_config.json`` and ``mps_allocation_config.json``.

``*_gb`` values are GiB. Unknown keys are allowed (seed readers ignore colo's additions; colo ignores other
tools' additions) — these models describe the keys colo relies on.

``model_config.json``::

    {"model_memory_specs": {"<model id>": {"memory_gb": 0.5, "dtype": "float32", "batch_size": 32,
                                           "max_seq_len": 512, "source": "measured"}},
     "agent_model_mappings": {"<agent>": ["<model id>", ...]},
     "batch_size_recommendations": {"<model id>": 32}}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from colo import units
from colo.errors import ConfigError
from colo.spec.config import AgentSpec, ColoConfig, GpuInventory, ModelSpec
from colo.spec.load import Loaded, config_error_from, parse_document, read_text


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class AgentAllocation(_Open):
    mps_memory_limit_gb: float = Field(ge=0)
    calculated_requirement_gb: float = Field(ge=0)
    safety_margin_gb: float = Field(ge=0)
    priority: Literal["high", "medium", "low"] = "medium"
    models: list[str] = Field(default_factory=list)


class SystemSummary(_Open):
    total_agents: int = Field(ge=0)
    total_calculated_memory_gb: float = Field(ge=0)
    total_mps_allocation_gb: float = Field(ge=0)
    total_safety_margin_gb: float = Field(ge=0)
    memory_efficiency_percent: float = Field(ge=0)
    gpu_utilization_percent: float = Field(ge=0)
    gpu_memory_gb: float = Field(gt=0)


class ResourceAllocation(_Open):
    agent_allocations: dict[str, AgentAllocation]
    system_summary: SystemSummary | None = None


class AllocationFile(_Open):
    """``mps_allocation_config.json``."""

    mps_resource_allocation: ResourceAllocation


class ModelMemorySpec(_Open):
    memory_gb: float = Field(gt=0, le=1024 * 1024)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=1)


class ModelConfigFile(_Open):
    """``model_config.json``."""

    model_memory_specs: dict[str, ModelMemorySpec]
    agent_model_mappings: dict[str, list[str]] = Field(default_factory=dict)
    batch_size_recommendations: dict[str, Annotated[int, Field(ge=1, strict=True)]] = Field(default_factory=dict)


FileKind = Literal["colo", "allocation", "model_config"]


def detect_kind(loaded: Loaded) -> FileKind:
    """Which of colo's file kinds a parsed document is."""
    data = loaded.data
    if "mps_resource_allocation" in data:
        return "allocation"
    if "model_memory_specs" in data:
        return "model_config"
    return "colo"


def load_document(path: str) -> tuple[Loaded, FileKind]:
    """Read any of colo's files (YAML or JSON) and say which kind it is."""
    loaded = parse_document(read_text(path), path)
    return loaded, detect_kind(loaded)


def parse_allocation(loaded: Loaded) -> AllocationFile:
    try:
        return AllocationFile.model_validate(loaded.data)
    except ValidationError as exc:
        raise config_error_from(exc, loaded) from exc


def parse_model_config(loaded: Loaded) -> ModelConfigFile:
    try:
        mc = ModelConfigFile.model_validate(loaded.data)
    except ValidationError as exc:
        raise config_error_from(exc, loaded) from exc
    for agent, models in mc.agent_model_mappings.items():
        for i, m in enumerate(models):
            if m not in mc.model_memory_specs:
                path = ("agent_model_mappings", agent, i)
                raise ConfigError(
                    f"unknown model {m!r}", source=loaded.source, field=f"agent_model_mappings.{agent}[{i}]",
                    line=loaded.lines.get(path), hint="add it under model_memory_specs",
                )
    return mc


def config_from_model_config(mc: ModelConfigFile, gpus: list[GpuInventory], source: str) -> ColoConfig:
    """A colo config equivalent to a seed ``model_config.json`` (all agents medium, policy defaults)."""
    if not mc.agent_model_mappings:
        raise ConfigError("has no agent_model_mappings; nothing to plan", source=source)
    models: dict[str, Any] = {}
    for mid, spec in mc.model_memory_specs.items():
        entry: dict[str, Any] = {"memory": units.from_gib(spec.memory_gb), "dtype": spec.dtype}
        batch = spec.batch_size or mc.batch_size_recommendations.get(mid)
        if batch:
            entry["batch_size"] = batch
        if spec.max_seq_len:
            entry["max_seq_len"] = spec.max_seq_len
        models[mid] = ModelSpec.model_validate(entry)
    try:
        return ColoConfig(
            gpus=gpus,
            models=models,
            agents={a: AgentSpec(models=ms) for a, ms in mc.agent_model_mappings.items()},
        )
    except ValidationError as exc:
        raise ConfigError(str(exc.errors(include_url=False)[0]["msg"]), source=source) from exc

