"""The workload contract an instance process drives, and the outcome of one request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RequestOutcome:
    """One request: ``items`` done (sequences, tokens), and optional numbers the workload measured itself
    (e.g. Ollama's server-side ``eval_duration``), summed over the run by the instance."""

    items: float
    extra: dict[str, float] = field(default_factory=dict)


class Workload(Protocol):
    """A benchmark workload inside one instance process.

    ``prepare`` loads, warms up and captures (not timed) and returns facts for the report (device, torch
    version, whether CUDA graphs are used); ``request`` runs one request to completion (synchronised with the
    GPU) and is timed by the caller; ``close`` frees what ``prepare`` took.
    """

    unit: str

    def prepare(self) -> dict[str, Any]: ...

    def request(self) -> RequestOutcome: ...

    def close(self) -> None: ...
