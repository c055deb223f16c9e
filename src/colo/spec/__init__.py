"""The user's files: colo.yaml (pydantic models) and the seed-format JSON files, with clear errors."""

from colo.spec.config import (
    AgentSpec,
    ColoConfig,
    GpuInventory,
    HealthCheck,
    Margin,
    ModelSpec,
    Policy,
    PriorityClass,
    RestartPolicy,
)
from colo.spec.load import load_config, load_config_text

__all__ = [
    "AgentSpec",
    "ColoConfig",
    "GpuInventory",
    "HealthCheck",
    "Margin",
    "ModelSpec",
    "Policy",
    "PriorityClass",
    "RestartPolicy",
    "load_config",
    "load_config_text",
]
