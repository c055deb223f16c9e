"""What one benchmark instance runs: a workload kind and its parameters, passed to the child as JSON.

The parent (:mod:`colo.bench.harness`) starts ``python -m colo.bench.instance '<InstanceSpec JSON>'`` once per
instance; the child builds the workload from :attr:`InstanceSpec.kind` and :attr:`InstanceSpec.params`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from colo.errors import UsageError

KINDS = ("encoder", "decode", "hf_decode", "cmd", "http", "cpu")


@dataclass(frozen=True)
class InstanceSpec:
    """One instance's workload.

    ``kind``: encoder | decode | hf_decode | cmd | http | cpu (a CPU-only workload used to test the harness);
    ``params``: the workload's keyword arguments (JSON values); ``label``: a name for reports (e.g. an agent);
    ``duration_secs``: the timed window after GO; ``env``: extra environment for this instance only
    (e.g. ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``).
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    duration_secs: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown workload {self.kind!r}; use one of {', '.join(KINDS)}")
        if not self.duration_secs > 0:
            raise UsageError(f"duration {self.duration_secs} s must be positive")

    def with_params(self, **changes: Any) -> InstanceSpec:
        """A copy with some parameters replaced (e.g. the merged batch)."""
        merged = dict(self.params)
        merged.update(changes)
        return InstanceSpec(self.kind, merged, self.label, self.duration_secs, dict(self.env))

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "params": dict(self.params),
                "label": self.label,
                "duration_secs": self.duration_secs,
                "env": dict(self.env),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> InstanceSpec:
        """Parse :meth:`to_json` output. Raises UsageError for malformed text."""
        try:
            raw = json.loads(text)
            return cls(
                kind=str(raw["kind"]),
                params=dict(raw.get("params", {})),
                label=str(raw.get("label", "")),
                duration_secs=float(raw.get("duration_secs", 10.0)),
                env={str(k): str(v) for k, v in dict(raw.get("env", {})).items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"bad instance spec {text[:200]!r}: {exc}") from exc

    def describe(self) -> str:
        """Short text for tables: kind and the parameters that define the shape."""
        keys = ("model", "shape", "batch_size", "seq_len", "url", "api", "command")
        parts = [f"{k}={self.params[k]}" for k in keys if k in self.params]
        return f"{self.kind}({', '.join(parts)})" if parts else self.kind
