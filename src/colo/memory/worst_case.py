"""THE worst-case request shape (:class:`WorstCase`) and each model's, from colo.yaml: what ``colo profile``
runs, ``colo estimate`` sizes and the model database is keyed by. (``spec.config.ModelSpec`` is what the user
declared; :func:`model_request` turns it into a WorstCase.)

Encoders: ``batch_size × max_seq_len`` in one forward pass. Generators: a ``max_seq_len`` prompt for each of
``batch_size`` sequences plus ``new_tokens`` generated. Seq2seq: a ``max_seq_len`` input, ``new_tokens`` out.
"""

from __future__ import annotations

from dataclasses import dataclass

from colo.errors import ConfigError
from colo.memory import catalog
from colo.memory.catalog import Task
from colo.spec.config import ColoConfig, ModelSpec


@dataclass(frozen=True)
class WorstCase:
    """One model at its worst-case request: ``batch_size`` sequences of ``seq_len`` tokens (the input for
    encoders, the prompt for generators and seq2seq) plus ``new_tokens`` generated, in ``dtype``. ``path``: a
    local checkpoint; ``random_weights``: profile without downloading weights (None: colo decides)."""

    model: str
    dtype: str = "float32"
    batch_size: int = 1
    seq_len: int = 512
    new_tokens: int = 0
    path: str | None = None
    random_weights: bool | None = None

    @property
    def shape(self) -> tuple[str, str, int, int, int]:
        return (self.model, self.dtype, self.batch_size, self.seq_len, self.new_tokens)


def task_for(model_id: str, spec: ModelSpec | None) -> Task:
    """The model's task: its ``task:`` in colo.yaml, else the catalog's, else ``encoder`` for a local path.

    Raises UnknownModelError for a model with neither.
    """
    if spec is not None and spec.task is not None:
        return spec.task
    found = catalog.find_entry(model_id)
    if found is not None:
        return found.task
    if spec is not None and spec.path:
        return "encoder"
    return catalog.task_of(model_id)  # raises UnknownModelError with the hint


def model_request(model_id: str, spec: ModelSpec | None = None, *, random_weights: bool | None = None) -> WorstCase:
    """The worst case of one model (a bare id gets batch 1 × 512, 64 new tokens for generators)."""
    spec = spec or ModelSpec()
    task = task_for(model_id, spec)
    return WorstCase(
        model=model_id,
        dtype=spec.dtype,
        batch_size=spec.batch_size,
        seq_len=spec.max_seq_len,
        new_tokens=spec.new_tokens if task != "encoder" else 0,
        path=spec.path,
        random_weights=random_weights,
    )


def config_requests(config: ColoConfig, *, random_weights: bool | None = None) -> dict[str, WorstCase]:
    """Every model of the config at its worst case, by model id."""
    return {mid: model_request(mid, spec, random_weights=random_weights) for mid, spec in config.models.items()}


def agent_requests(config: ColoConfig, agent: str, *, random_weights: bool | None = None) -> tuple[WorstCase, ...]:
    """The models an agent loads together, each at its worst case. Raises ConfigError for an unknown agent."""
    if agent not in config.agents:
        raise ConfigError(f"no agent {agent!r}", field="agents", hint=f"agents are: {', '.join(config.agents)}")
    return tuple(
        model_request(m, config.models.get(m), random_weights=random_weights) for m in config.agents[agent].models
    )
