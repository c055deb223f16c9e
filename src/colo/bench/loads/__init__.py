"""Built-in benchmark workloads; each instance process builds one with :func:`make_workload`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from colo.bench.loads.base import RequestOutcome, Workload
from colo.errors import UsageError

__all__ = ["RequestOutcome", "Workload", "make_workload"]


# kind -> (module, class): imported only when that kind runs (torch, transformers, httpx stay unloaded).
KINDS = {
    "encoder": ("colo.bench.loads.encoder", "EncoderWorkload"),
    "decode": ("colo.bench.loads.decode", "DecodeWorkload"),
    "hf_decode": ("colo.bench.loads.hf_decode", "HfDecodeWorkload"),
    "cmd": ("colo.bench.loads.cmd", "CommandWorkload"),
    "http": ("colo.bench.loads.http", "HttpWorkload"),
    "cpu": ("colo.bench.loads.cpu", "CpuWorkload"),
}


def make_workload(kind: str, params: Mapping[str, Any]) -> Workload:
    """The workload ``kind`` with keyword ``params``. Raises UsageError for an unknown kind or parameter."""
    if kind not in KINDS:
        raise UsageError(f"unknown workload {kind!r}")
    module, name = KINDS[kind]
    cls = getattr(importlib.import_module(module), name)
    try:
        workload: Workload = cls(**params)
    except TypeError as exc:
        raise UsageError(f"workload {kind!r}: bad parameters {dict(params)!r}: {exc}") from exc
    return workload
