"""``colo capacity``: how many instances of one model fit on one GPU — the seed guide's capacity table
("theoretical max" vs "practical max") made exact.

- *theoretical*: GPU memory // the model's requirement (no margin, nothing reserved);
- *with margins*: (GPU memory − the policy's reserve) // the per-instance MPS limit (``plan/limits.py``'s
  :func:`~colo.plan.limits.limit_for`, the formula ``colo plan`` uses);
- *client cap*: MPS serves at most ``max_clients_per_gpu`` client processes per GPU (48 by default);
- the answer is the smaller of the last two, and says which one limited it.

Pure functions; the CLI resolves the requirement and the GPU's memory first.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from colo import units
from colo.plan.limits import limit_for
from colo.spec.config import Policy

if TYPE_CHECKING:
    from colo.spec.config import ColoConfig

# Memory NVML reports for common GPUs (MiB), matched by lower-case words in the name. Longest key first wins.
KNOWN_GPUS_MIB: dict[str, int] = {
    "h200": 143771,
    "h100 nvl": 95830,
    "h100 pcie": 81559,
    "h100": 81559,
    "a100-80gb": 81920,
    "a100 80gb": 81920,
    "a100-40gb": 40960,
    "a100 40gb": 40960,
    "a100": 40960,
    "a30": 24576,
    "l40s": 46068,
    "l40": 46068,
    "l4": 23034,
    "a10": 23028,
    "t4": 15360,
    "v100-32gb": 32768,
    "v100": 16384,
    "rtx 5090": 32607,
    "rtx 4090": 24564,
    "rtx 3090": 24576,
    "rtx a6000": 49140,
    "dgx spark": 122880,  # unified memory, as the seed guide counts it (~120 GB)
    "gb10": 122880,
}


def known_gpu_bytes(name: str) -> int | None:
    """Memory of a GPU named like ``"H100"``, ``"NVIDIA GeForce RTX 3090"``, ``"A100-40GB"``; None if unknown."""
    text = name.lower().replace("_", " ")
    for key in sorted(KNOWN_GPUS_MIB, key=len, reverse=True):
        if key in text:
            return KNOWN_GPUS_MIB[key] * units.MIB
    return None


@dataclass(frozen=True)
class CapacityAnswer:
    """How many instances fit, and the numbers behind each count."""

    model: str
    requirement_bytes: int
    gpu_name: str
    gpu_memory_bytes: int
    reserve_bytes: int
    margin_bytes: int
    limit_bytes: int
    theoretical: int
    with_margins: int
    client_cap: int
    margin_policy: str
    requirement_source: str = ""

    @property
    def practical(self) -> int:
        """min(with margins, client cap)."""
        return min(self.with_margins, self.client_cap)

    @property
    def limited_by(self) -> str:
        """``"memory"`` or ``"client cap"``."""
        return "client cap" if self.client_cap < self.with_margins else "memory"

    @property
    def free_after_bytes(self) -> int:
        """Memory left after ``practical`` instances at their limits (and the reserve)."""
        return self.gpu_memory_bytes - self.reserve_bytes - self.practical * self.limit_bytes

    def to_dict(self) -> dict[str, Any]:
        """Every field (the GPU's name as ``gpu``) and the derived figures."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["gpu"] = out.pop("gpu_name")
        return {
            **out,
            "practical": self.practical,
            "limited_by": self.limited_by,
            "free_after_bytes": self.free_after_bytes,
        }

    def lines(self) -> list[str]:
        """Human summary, one fact per line."""
        fs = units.format_size
        return [
            f"{self.model} on {self.gpu_name} ({fs(self.gpu_memory_bytes)})",
            f"  requirement per instance: {fs(self.requirement_bytes)}"
            + (f" ({self.requirement_source})" if self.requirement_source else ""),
            f"  theoretical max: {self.theoretical} (memory / requirement, no margin)",
            f"  with margins: {self.with_margins} (limit {fs(self.limit_bytes)} = requirement + margin "
            f"{fs(self.margin_bytes)} [{self.margin_policy}], reserve {fs(self.reserve_bytes)})",
            f"  MPS client cap: {self.client_cap} per GPU",
            f"  practical max: {self.practical} (limited by {self.limited_by}; "
            f"{fs(max(self.free_after_bytes, 0))} left over)",
        ]


def capacity_for(
    model: str,
    requirement_bytes: int,
    gpu_name: str,
    gpu_memory_bytes: int,
    *,
    policy: Policy | None = None,
    requirement_source: str = "",
) -> CapacityAnswer:
    """Count instances of a model needing ``requirement_bytes`` on a GPU of ``gpu_memory_bytes``, under
    ``policy`` (margin, rounding, reserve, client cap; colo's defaults when None). Raises ValueError for a
    requirement that is not positive."""
    if requirement_bytes <= 0:
        raise ValueError(f"the requirement of {model!r} must be positive, got {requirement_bytes} bytes")
    pol = policy or Policy()
    margin = pol.margin.margin_bytes(requirement_bytes)
    limit = limit_for(requirement_bytes, pol.margin, pol.round_to_bytes)  # the limit `colo plan` gives
    usable = max(gpu_memory_bytes - pol.reserve_per_gpu_bytes, 0)
    return CapacityAnswer(
        model=model,
        requirement_bytes=requirement_bytes,
        gpu_name=gpu_name,
        gpu_memory_bytes=gpu_memory_bytes,
        reserve_bytes=pol.reserve_per_gpu_bytes,
        margin_bytes=margin,
        limit_bytes=limit,
        theoretical=gpu_memory_bytes // requirement_bytes,
        with_margins=usable // limit,
        client_cap=pol.max_clients_per_gpu,
        margin_policy=pol.margin.describe(),
        requirement_source=requirement_source,
    )


def resolve_requirement(
    model: str,
    *,
    memory: str | None = None,
    config: ColoConfig | None = None,
    dtype: str = "float32",
    batch_size: int = 1,
    seq_len: int = 512,
    new_tokens: int = 0,
) -> tuple[int, str]:
    """The model's requirement in bytes and where it came from: ``memory`` when given, else a command agent's
    measurement (:func:`measured_in_command_agent`), else what the config's plan counts for it (declared ``memory``, or the model database under ``memory_source: db``), else colo's offline estimate (catalog models; needs torch) for the given shape.

    Raises ValueError saying what to pass when none gives a number.
    """
    if memory is not None:
        return units.parse_size(memory), "given (--memory)"
    if config is not None and model in config.models:
        from colo.supervise.planning import model_requirement

        by_agent = measured_in_command_agent(config, model)
        if by_agent is not None:
            return by_agent

        planned = model_requirement(config, model)  # what `colo plan` counts for it
        if planned is not None:
            if planned.source == "declared":
                return planned.requirement_bytes, "declared in the config"
            return planned.requirement_bytes, f"{planned.source}: {planned.detail}"
        spec = config.models[model]
        dtype, batch_size, seq_len, new_tokens = spec.dtype, spec.batch_size, spec.max_seq_len, spec.new_tokens
    from colo.errors import ColoError
    from colo.memory.estimate import estimate
    from colo.memory.worst_case import WorstCase

    try:
        est = estimate(WorstCase(model, dtype=dtype, batch_size=batch_size, seq_len=seq_len, new_tokens=new_tokens))
    except ColoError as exc:
        raise ValueError(
            f"no memory requirement for {model!r} ({exc}); pass --memory (e.g. --memory 4.9GiB), or --config "
            f"with a colo.yaml that declares it"
        ) from exc
    return est.nvml_peak_bytes, f"estimated ({dtype}, batch {batch_size} × {seq_len} tokens)"


def resolve_gpu_memory(
    *, gpu: str | None = None, gpu_memory: str | None = None, config: ColoConfig | None = None
) -> tuple[str, int]:
    """(name, bytes) of the GPU to count for: ``--gpu-memory``, else a known ``--gpu`` name, else the config's
    first inventory GPU. Raises ValueError when none applies."""
    if gpu_memory is not None:
        return gpu or "GPU", units.parse_size(gpu_memory)
    if gpu is not None:
        known = known_gpu_bytes(gpu)
        if known is None:
            raise ValueError(
                f"unknown GPU {gpu!r}; pass --gpu-memory (e.g. 80GiB). Known: {', '.join(sorted(KNOWN_GPUS_MIB))}"
            )
        return gpu, known
    if config is not None and isinstance(config.gpus, list) and config.gpus:
        first = config.gpus[0]
        return first.name, first.memory_bytes
    raise ValueError("which GPU? pass --gpu NAME (e.g. H100) or --gpu-memory 80GiB, or --config with a gpus list")


def measured_in_command_agent(config: ColoConfig, model: str) -> tuple[int, str] | None:
    """Under ``memory_source: db``: the largest measured peak of a command agent serving only ``model``
    (``colo profile`` of e.g. a llama-server agent), with where it came from; else None."""
    if config.policy.memory_source != "db":
        return None
    from colo.memory.db import ModelDB
    from colo.memory.resolve import agent_memory_for_plan

    found = agent_memory_for_plan(config, ModelDB.open_default(config))
    serving = [
        (found[name], name)
        for name, agent in config.agents.items()
        if agent.command is not None and agent.models == [model] and name in found and found[name].source == "measured"
    ]
    if not serving:
        return None
    mem, name = max(serving, key=lambda pair: pair[0].requirement_bytes)
    return mem.requirement_bytes, f"measured: agent {name}, {mem.detail}"
