"""Export to the seed system's ``model_config.json`` (read by :class:`colo.spec.seed_format.ModelConfigFile`).

``memory_gb`` is GiB (the seed's "GB"), rounded up to 3 decimals so a limit built from it never falls below
the figure colo used; ``source`` says where it came from (measured | estimated | declared).
"""

from __future__ import annotations

import math
from typing import Any

from colo import units
from colo.memory.db import ModelDB
from colo.memory.resolve import memory_for_plan
from colo.spec.config import ColoConfig


def gib_up(value_bytes: int, ndigits: int = 3) -> float:
    """Bytes as GiB rounded UP to ``ndigits`` decimals."""
    scale = 10**ndigits
    return float(math.ceil(value_bytes / units.GIB * scale - 1e-9) / scale)


def model_config_document(config: ColoConfig, db: ModelDB, gpu_name: str | None = None) -> dict[str, Any]:
    """The seed-format ``model_config.json`` for ``config`` with measured > estimated > declared memory.

    Keys: ``model_memory_specs`` {model: {memory_gb, dtype, batch_size, max_seq_len, source, detail}},
    ``agent_model_mappings`` {agent: [models]}, ``batch_size_recommendations`` {model: batch}. Models with no
    figure at all are left out of ``model_memory_specs`` (and listed under ``colo.missing``).
    """
    memory = memory_for_plan(config, db, gpu_name)
    specs: dict[str, Any] = {}
    for mid, spec in config.models.items():
        mm = memory.get(mid)
        if mm is None:
            continue
        specs[mid] = {
            "memory_gb": gib_up(mm.requirement_bytes),
            "dtype": spec.dtype,
            "batch_size": spec.batch_size,
            "max_seq_len": spec.max_seq_len,
            "source": mm.source,
            "detail": mm.detail,
        }
    return {
        "model_memory_specs": specs,
        "agent_model_mappings": {name: list(agent.models) for name, agent in config.agents.items()},
        "batch_size_recommendations": {mid: spec.batch_size for mid, spec in config.models.items()},
        "colo": {
            "generated_by": "colo db export",
            "gpu": gpu_name,
            "missing": sorted(set(config.models) - set(specs)),
        },
    }
