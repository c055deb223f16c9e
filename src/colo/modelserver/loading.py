"""Loading an agent's models for the built-in agent: device choice, weights or catalog, tokenizer, limits.

Each model is built by :func:`colo.memory.build.build`: real weights from the model's ``path`` or the
local Hugging Face cache when they are there, else the exact architecture from colo's catalog with random
weights, so an agent runs offline. Nothing here downloads. torch is imported inside functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ConfigError
from colo.modelserver.tokens import Tokenizer, load_tokenizer
from colo.spec.config import ColoConfig, ModelSpec, Task

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random (catalog architecture)"


@dataclass(frozen=True)
class ModelLimits:
    """What one request to a model may ask for (the worst case the plan was made for)."""

    max_batch: int
    max_seq_len: int
    new_tokens: int


@dataclass
class LoadedModel:
    """A model on its device, ready for inference. ``module`` is a torch.nn.Module in eval mode."""

    model_id: str
    task: Task
    module: Any
    tokenizer: Tokenizer
    weights: str
    dtype: str
    vocab_size: int
    limits: ModelLimits
    parameters: int
    load_secs: float

    def describe(self) -> dict[str, Any]:
        """The model's entry in /health."""
        return {
            "id": self.model_id,
            "task": self.task,
            "weights": self.weights,
            "tokenizer": self.tokenizer.description,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "vocab_size": self.vocab_size,
            "max_batch": self.limits.max_batch,
            "max_seq_len": self.limits.max_seq_len,
            "new_tokens": self.limits.new_tokens,
            "load_secs": round(self.load_secs, 3),
        }


def resolve_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is checked and returned.

    Raises ConfigError for a cuda device when torch sees no GPU, or an unknown device string.
    """
    import torch

    req = requested.strip().lower()
    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {requested!r} was asked for but torch sees no CUDA GPU",
                field="--device",
                hint="use --device auto or cpu, or check CUDA_VISIBLE_DEVICES and the driver (nvidia-smi)",
            )
        return req
    raise ConfigError(f"{requested!r} is not a device", field="--device", hint="use auto, cpu, cuda or cuda:N")


def limits_for(model_id: str, spec: ModelSpec, task: Task, max_positions: int | None) -> ModelLimits:
    """The request bounds for a model: the spec's worst case, cut to what its position embeddings allow.

    ``max_positions`` is the longest sequence the architecture takes (None: unbounded). Generators need room
    for ``new_tokens`` after the prompt. A cut is logged, never silent. Raises ConfigError when a generator's
    ``new_tokens`` leave no room for a prompt.
    """
    seq = spec.max_seq_len
    new_tokens = spec.new_tokens if task != "encoder" else 0
    if max_positions is not None:
        room = max_positions - (new_tokens if task == "generator" else 0)
        if room < 1:
            raise ConfigError(
                f"new_tokens {new_tokens} leaves no room for a prompt in {max_positions} positions",
                field=f"models.{model_id}.new_tokens",
                hint="lower new_tokens",
            )
        if seq > room:
            log.warning("%s: max_seq_len %d cut to %d (the model's positions)", model_id, seq, room)
            seq = room
    return ModelLimits(max_batch=spec.batch_size, max_seq_len=seq, new_tokens=new_tokens)


def load_model(
    model_id: str,
    spec: ModelSpec,
    *,
    device: str,
    dtype: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> LoadedModel:
    """Build ``model_id`` on ``device`` with real weights when present, else random catalog weights.

    ``dtype`` overrides the spec's; the spec's ``task`` overrides the catalog's. Raises ConfigError /
    UnknownModelError / ProfileError from colo.memory.build, and torch's errors (CUDA out of memory included)
    as they are: the caller decides what an OOM means.
    """
    from colo.memory.build import RANDOM_WEIGHTS as BUILD_RANDOM
    from colo.memory.build import build, max_positions, take_prebuilt

    started = clock.monotonic()
    use_dtype = dtype or spec.dtype
    # Built once by the launcher this agent was forked from (same source and dtype): only moved here.
    built = take_prebuilt(model_id, dtype=use_dtype, device=device, path=spec.path)
    prebuilt = built is not None
    if built is None:
        built = build(model_id, dtype=use_dtype, device=device, path=spec.path)
    module = built.module
    source = built.source
    task: Task = spec.task or source.task
    real = source.weights_dir is not None
    vocab_size = int(source.config.get("vocab_size") or 0)
    if vocab_size < 2:
        raise ConfigError(f"cannot tell the vocabulary size of {model_id}", field=f"models.{model_id}")
    tokenizer = load_tokenizer(model_id, source.weights_dir or spec.path, vocab_size, real_weights=real)
    limits = limits_for(model_id, spec, task, max_positions(source))
    parameters = sum(int(p.numel()) for p in module.parameters())
    loaded = LoadedModel(
        model_id=model_id,
        task=task,
        module=module,
        tokenizer=tokenizer,
        weights=RANDOM_WEIGHTS if source.description == BUILD_RANDOM else source.description,
        dtype=use_dtype,
        vocab_size=vocab_size,
        limits=limits,
        parameters=parameters,
        load_secs=clock.monotonic() - started,
    )
    log.info(
        "%s: loaded on %s (%s%s, %s, %.1fM parameters) in %.2fs",
        model_id,
        device,
        source.description,
        ", prebuilt by the launcher" if prebuilt else "",
        use_dtype,
        parameters / 1e6,
        loaded.load_secs,
    )
    return loaded


def agent_models(config: ColoConfig, agent_name: str, source: str = "colo.yaml") -> list[tuple[str, ModelSpec]]:
    """The (model id, spec) pairs of ``agent_name``, in the agent's order.

    Raises ConfigError naming the agent when it is not in ``config`` (listing the ones that are).
    """
    agent = config.agents.get(agent_name)
    if agent is None:
        known = ", ".join(sorted(config.agents)) or "none"
        raise ConfigError(
            f"no agent {agent_name!r} (agents: {known})",
            source=source,
            field="agents",
            hint="pass one of the agent names with --agent",
        )
    return [(m, config.models[m]) for m in agent.models]
