"""A CPU-only workload (sleep and/or arithmetic per request): tests the harness without a GPU."""

from __future__ import annotations

import time
from typing import Any

from colo.bench.loads.base import RequestOutcome


class CpuWorkload:
    """Each request sleeps ``sleep_secs`` and sums ``work`` integers; counts ``items_per_request`` items.

    ``fail_in`` makes ``prepare`` raise (to test error paths).
    """

    unit = "item"

    def __init__(
        self,
        sleep_secs: float = 0.001,
        work: int = 0,
        items_per_request: float = 1.0,
        prepare_secs: float = 0.0,
        fail_in: str = "",
    ) -> None:
        self.sleep_secs = sleep_secs
        self.work = work
        self.items_per_request = items_per_request
        self.prepare_secs = prepare_secs
        self.fail_in = fail_in

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
