"""A CPU-only workload (sleep and/or arithmetic per request): tests the harness without a GPU."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from colo.bench.loads.base import RequestOutcome


@dataclass
class CpuWorkload:
    """Each request sleeps ``sleep_secs`` and sums ``work`` integers; counts ``items_per_request`` items.

    ``fail_in`` makes ``prepare`` raise (to test error paths).
    """

    unit: ClassVar[str] = "item"

    sleep_secs: float = 0.001
    work: int = 0
    items_per_request: float = 1.0
    prepare_secs: float = 0.0
    fail_in: str = ""

    def prepare(self) -> dict[str, Any]:
        if self.fail_in == "prepare":
            raise RuntimeError("cpu workload told to fail in prepare")
        if self.prepare_secs:
            time.sleep(self.prepare_secs)
        return {"device": "cpu"}

    def request(self) -> RequestOutcome:
        if self.fail_in == "request":
            raise RuntimeError("cpu workload told to fail in request")
        if self.sleep_secs:
            time.sleep(self.sleep_secs)
        total = 0
        for i in range(self.work):
            total += i
        return RequestOutcome(self.items_per_request, {"checksum": float(total % 7)})

    def close(self) -> None:
        return None
