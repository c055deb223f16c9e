"""Built-in benchmark workloads; each instance process builds one with :func:`make_workload`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from colo.bench.loads.base import RequestOutcome, Workload
from colo.errors import UsageError

__all__ = ["RequestOutcome", "Workload", "make_workload"]


def make_workload(kind: str, params: Mapping[str, Any]) -> Workload:
    """The workload ``kind`` with keyword ``params``. Raises UsageError for an unknown kind or parameter."""
    try:
        if kind == "encoder":
            from colo.bench.loads.encoder import EncoderWorkload

            return EncoderWorkload(**params)
        if kind == "decode":
            from colo.bench.loads.decode import DecodeWorkload

            return DecodeWorkload(**params)
        if kind == "hf_decode":
            from colo.bench.loads.hf_decode import HfDecodeWorkload

            return HfDecodeWorkload(**params)
        if kind == "cmd":
            from colo.bench.loads.cmd import CommandWorkload

            return CommandWorkload(**params)
        if kind == "http":
            from colo.bench.loads.http import HttpWorkload

            return HttpWorkload(**params)
        if kind == "cpu":
            from colo.bench.loads.cpu import CpuWorkload

            return CpuWorkload(**params)
    except TypeError as exc:
        raise UsageError(f"workload {kind!r}: bad parameters {dict(params)!r}: {exc}") from exc
    raise UsageError(f"unknown workload {kind!r}")
