"""The route modules of colo.api.routes, each met by name: which paths each one serves, the SSE frame of an
event, the cached body a read serves without a thread hop, and colo.api.source's one GPU poller read on
demand at most once per interval."""

from __future__ import annotations

import asyncio

from colo.api.cache import TtlCache
from colo.api.routes import agents, apply, events, reads
from colo.api.source import PolledGpu
from colo.clock import FakeClock
from colo.gpu.poller import GpuState
from colo.supervise.snapshots import Event, EventKind


def _paths(router: object) -> set[tuple[str, str]]:
    return {(m, r.path) for r in router.routes for m in r.methods}  # type: ignore[attr-defined]


def test_each_module_serves_its_paths() -> None:
    assert _paths(agents.router) == {
        ("GET", "/agents"),
        ("GET", "/agents/{name}"),
        ("POST", "/agents/{name}/{action}"),
    }
    assert _paths(apply.router) == {("POST", "/apply"), ("POST", "/tune")}
    assert _paths(events.router) == {("GET", "/events")}
    assert {p for _, p in _paths(reads.router)} >= {"/healthz", "/mps/allocation", "/gpu/info", "/metrics"}
    assert reads.healthz()["status"] == "ok"


def test_an_event_as_an_sse_frame() -> None:
    frame = events.sse_frame(Event(7, 1.5, EventKind.OOM, "critic", "CUDA out of memory", "GPU-1"))
    head, data = frame.rsplit("data: ", 1)
    assert head == f"id: 7\nevent: {EventKind.OOM.value}\n" and frame.endswith("\n\n")
    assert '"agent": "critic"' in data and f'"kind": "{EventKind.OOM.value}"' in data


def test_a_fresh_cached_body_is_served_without_loading() -> None:
    clock = FakeClock()
    cache: TtlCache[bytes] = TtlCache(1.0, clock)
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return b"body"

    assert asyncio.run(reads.cached_body(cache, load)) == b"body"
    assert asyncio.run(reads.cached_body(cache, load)) == b"body" and len(loads) == 1


def test_polled_gpu_reads_once_per_interval_and_says_when_there_is_no_gpu() -> None:
    clock = FakeClock()

    class Poller:
        reads = 0

        def read(self) -> GpuState:
            Poller.reads += 1
            return GpuState({"gpus": []})

    gpu = PolledGpu(Poller(), poll_secs=1.0, clock=clock)  # type: ignore[arg-type]
    state, at = gpu.get()
    gpu.get()
    assert Poller.reads == 1 and state.error is None and at == clock.monotonic()
    none, _ = PolledGpu(None).get()
    assert none.error is not None
