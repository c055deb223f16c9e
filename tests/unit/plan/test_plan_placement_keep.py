"""colo.plan.placement's ``keep``: a running colo planning again keeps each agent on its GPU while its pin
allows it and it fits there, whatever the strategy would choose afresh (issue 23: ``colo apply`` moves one
agent without reshuffling the rest)."""

from __future__ import annotations

import pytest

from colo.plan.placement import Request, place
from colo.plan.planner import plan
from colo.plan.types import GpuSlot
from colo.spec.load import load_config_text

GIB = 1 << 30
LABELS = ["gpu0", "gpu1"]


def reqs(keep: dict[str, int], pins: dict[str, tuple[int, ...]] | None = None) -> list[Request]:
    """Four 1 GiB agents a-d, each at ``keep`` (when given), pinned per ``pins``."""
    pins = pins or {}
    return [Request(n, "medium", GIB, pins.get(n), keep.get(n)) for n in "abcd"]


@pytest.mark.parametrize("strategy", ["binpack", "spread"])
def test_without_keep_the_strategy_decides_with_keep_every_agent_stays(strategy: str) -> None:
    fresh = place(reqs({}), [10 * GIB, 10 * GIB], LABELS, strategy=strategy)  # type: ignore[arg-type]
    expected = {"a": 0, "b": 0, "c": 0, "d": 0} if strategy == "binpack" else {"a": 0, "b": 1, "c": 0, "d": 1}
    assert fresh.placed == expected
    odd = {"a": 1, "b": 0, "c": 1, "d": 1}  # not what either strategy would choose
    kept = place(reqs(odd), [10 * GIB, 10 * GIB], LABELS, strategy=strategy)  # type: ignore[arg-type]
    assert kept.placed == odd and not kept.refused


def test_a_pin_elsewhere_moves_only_that_agent() -> None:
    where = {"a": 0, "b": 1, "c": 0, "d": 1}  # what spread chose
    moved = place(reqs(where, {"b": (0,)}), [10 * GIB, 10 * GIB], LABELS, strategy="spread")
    assert moved.placed == {"a": 0, "b": 0, "c": 0, "d": 1}
    # afresh, the pin would have pushed c over to gpu1 as well
    fresh = place(reqs({}, {"b": (0,)}), [10 * GIB, 10 * GIB], LABELS, strategy="spread")
    assert fresh.placed["c"] == 1


def test_an_agent_that_no_longer_fits_where_it_is_or_finds_the_gpu_full_is_placed_afresh() -> None:
    big = [Request("a", "high", 5 * GIB, None, 0), Request("b", "medium", 2 * GIB, None, 0)]
    out = place(big, [6 * GIB, 6 * GIB], LABELS, strategy="binpack")
    assert out.placed == {"a": 0, "b": 1}  # b kept gpu0 no longer has room for it: best fit elsewhere
    capped = place(reqs({n: 0 for n in "abcd"}), [10 * GIB, 10 * GIB], LABELS, max_clients=2)
    assert capped.placed == {"a": 0, "b": 0, "c": 1, "d": 1}  # gpu0 at the client cap after two
    gone = place(reqs({"a": 7}), [10 * GIB, 10 * GIB], LABELS, strategy="spread")  # a GPU that is not there
    assert gone.placed["a"] == 0 and not gone.refused


CONFIG = """\
version: 1
gpus: [{name: A, memory: 10GiB, count: 2}]
policy: {placement: spread}
models: {m: {memory: 1GiB}}
agents:
  a: {models: [m], margin: 0GiB}
  b: {models: [m], margin: 0GiB, gpu: 0}
  c: {models: [m], margin: 0GiB}
  d: {models: [m], margin: 0GiB}
"""


def test_the_planner_takes_keep_by_gpu_key_and_ignores_unknown_keys() -> None:
    config = load_config_text(CONFIG)
    slots = [GpuSlot("local", i, "A", 10 * GIB) for i in range(2)]
    keep = {"a": "local:0", "b": "local:1", "c": "local:0", "d": "local:1", "e": "local:9"}
    p = plan(config, slots, keep=keep)
    assert {ap.name: ap.gpu.key for ap in p.placed if ap.gpu is not None} == {
        "a": "local:0",
        "b": "local:0",
        "c": "local:0",
        "d": "local:1",
    }
    fresh = plan(config, slots)
    assert {ap.name: ap.gpu.key for ap in fresh.placed if ap.gpu is not None}["c"] == "local:1"
