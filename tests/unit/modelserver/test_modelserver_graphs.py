"""CUDA-graph replay of encoder forwards (``colo.modelserver.graphs``) against the fake backend: which batches
qualify, lazy capture, the memory budget, failures turning graphs off for one model, the off switch; and the
batch path (``run_merged``) answering the same through a graph as eagerly."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from modelserver_fakes import StepClock, tiny_loaded

from colo.modelserver.fake_graphs import FakeGraphBackend
from colo.modelserver.graphs import (
    DEFAULT_GRAPH_BUDGET_BYTES,
    MAX_GRAPH_ROWS,
    MAX_GRAPH_SEQ_LEN,
    DeviceMemory,
    EncoderGraphs,
    graph_budget_bytes,
    graph_key,
    headroom_bytes,
)
from colo.modelserver.inference import run_merged
from colo.modelserver.loading import LoadedModel
from colo.units import MIB


def ids(rows: int, width: int, start: int = 5) -> list[list[int]]:
    return [[start + (r * 7 + c) % 90 for c in range(width)] for r in range(rows)]


def on_device(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


@pytest.fixture
def bert() -> LoadedModel:
    return tiny_loaded("bert", model_id="enc", max_batch=16, max_seq_len=32)


def replay(graphs: EncoderGraphs, model: LoadedModel, rows: list[list[int]]) -> Any:
    return graphs.replay(model, rows, on_device(rows))


# --- which batches qualify ---------------------------------------------------------------------------------


def test_a_batch_qualifies_only_unpadded_and_within_the_bounds() -> None:
    assert graph_key(ids(1, 16)) == (1, 16)
    assert graph_key(ids(MAX_GRAPH_ROWS, MAX_GRAPH_SEQ_LEN)) == (MAX_GRAPH_ROWS, MAX_GRAPH_SEQ_LEN)
    assert graph_key([[1, 2, 3], [4, 5]]) is None  # padded: the mask would not be all ones
    assert graph_key(ids(MAX_GRAPH_ROWS + 1, 4)) is None
    assert graph_key(ids(1, MAX_GRAPH_SEQ_LEN + 1)) is None
    assert graph_key([]) is None and graph_key([[]]) is None
    assert graph_key(ids(3, 5), max_rows=2) is None and graph_key(ids(2, 5), max_seq_len=4) is None


# --- the budget ------------------------------------------------------------------------------------------------


def test_the_budget_is_half_the_room_left_and_at_most_64_mib() -> None:
    # Under MPS: CUDA reports what is left of the pinned limit (context counted) after the worst-case warm-up.
    after_warm_up = DeviceMemory(reserved_bytes=300 * MIB, peak_reserved_bytes=300 * MIB, free_bytes=40 * MIB)
    assert headroom_bytes(after_warm_up) == 40 * MIB
    assert graph_budget_bytes(headroom_bytes(after_warm_up)) == 20 * MIB
    # The cache gave 100 MiB back since its peak: a worst-case batch takes them again.
    emptied = DeviceMemory(reserved_bytes=200 * MIB, peak_reserved_bytes=300 * MIB, free_bytes=140 * MIB)
    assert headroom_bytes(emptied) == 40 * MIB
    # A GPU without MPS: the allocator cap less the peak, when smaller than what the GPU has free.
    whole_gpu = DeviceMemory(reserved_bytes=300 * MIB, peak_reserved_bytes=300 * MIB, free_bytes=70_000 * MIB)
    assert headroom_bytes(whole_gpu, cap_bytes=310 * MIB) == 10 * MIB
    assert graph_budget_bytes(headroom_bytes(whole_gpu)) == DEFAULT_GRAPH_BUDGET_BYTES == 64 * MIB
    assert headroom_bytes(whole_gpu, cap_bytes=200 * MIB) == 0 and graph_budget_bytes(0) == 0


def test_captures_stop_once_the_next_would_pass_the_budget(bert: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeGraphBackend(capture_bytes=lambda key: 10 * MIB)
    graphs = EncoderGraphs(backend, budget_bytes=25 * MIB, clock=StepClock())
    with caplog.at_level(logging.INFO, logger="colo.modelserver.graphs"):
        assert replay(graphs, bert, ids(1, 4)) is not None
        assert replay(graphs, bert, ids(1, 5)) is not None
        assert replay(graphs, bert, ids(1, 6)) is None  # 20 MiB held + 10 MiB more would pass 25
        assert replay(graphs, bert, ids(1, 7)) is None
    assert backend.captures == [(1, 4), (1, 5)]
    snap = graphs.snapshot()
    assert snap.graphs == 2 and snap.pool_bytes == 20 * MIB <= snap.budget_bytes
    assert snap.full is not None and "budget of 25.0 MiB reached" in snap.full
    assert caplog.text.count("new shapes run eagerly") == 1  # logged once
    assert "enc: CUDA graph 1x4 captured in" in caplog.text
    # The shapes held still replay.
    assert replay(graphs, bert, ids(1, 5, start=9)) is not None and graphs.snapshot().replays == 3


def test_a_models_first_capture_past_the_budget_is_undone_and_no_shape_as_large_is_tried(bert: LoadedModel) -> None:
    backend = FakeGraphBackend(capture_bytes=lambda key: MIB * (100 if key[0] * key[1] >= 256 else 2))
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB, clock=StepClock())
    assert replay(graphs, bert, ids(8, 32)) is None
    assert backend.captures == [(8, 32)] and backend.held_bytes() == 0  # its pool went back to the device
    snap = graphs.snapshot()
    assert snap.graphs == 0 and snap.pool_bytes == 0 and snap.full is None
    assert snap.to_dict()["models"]["enc"]["too_large"] == "8x32"
    assert replay(graphs, bert, ids(8, 32)) is None and replay(graphs, bert, ids(4, 64)) is None  # as large
    assert replay(graphs, bert, ids(2, 16)) is not None  # smaller: captured, into a new pool
    assert backend.captures == [(8, 32), (2, 16)] and graphs.snapshot().pool_bytes == 2 * MIB


def test_a_later_capture_past_the_budget_is_kept_reported_and_the_last(bert: LoadedModel) -> None:
    backend = FakeGraphBackend(capture_bytes=lambda key: MIB * (2 if key == (1, 4) else 30))
    graphs = EncoderGraphs(backend, budget_bytes=20 * MIB, clock=StepClock())
    assert replay(graphs, bert, ids(1, 4)) is not None
    # 2 + 2 (the most one capture added so far) fit: captured; it adds 30, which its shared pool cannot give back.
    assert replay(graphs, bert, ids(8, 32)) is not None
    snap = graphs.snapshot()
    assert snap.graphs == 2 and snap.pool_bytes == 32 * MIB == backend.held_bytes() and snap.full is not None
    assert replay(graphs, bert, ids(2, 4)) is None and len(backend.captures) == 2


def test_no_room_means_no_capture(bert: LoadedModel) -> None:
    backend = FakeGraphBackend()
    graphs = EncoderGraphs(backend, budget_bytes=0)
    assert replay(graphs, bert, ids(1, 4)) is None and backend.captures == []


def test_at_most_max_graphs_are_held(bert: LoadedModel) -> None:
    backend = FakeGraphBackend(capture_bytes=lambda key: 0)
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB, max_graphs=2)
    for width in (3, 4, 5):
        replay(graphs, bert, ids(1, width))
    assert backend.captures == [(1, 3), (1, 4)] and graphs.snapshot().full == "2 graphs held (the most, MAX_GRAPHS)"


# --- lazy capture, replay, what does not qualify ----------------------------------------------------------------


def test_a_shape_is_captured_once_then_replayed(bert: LoadedModel) -> None:
    backend = FakeGraphBackend()
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB)
    first = replay(graphs, bert, ids(2, 6))
    again = replay(graphs, bert, ids(2, 6, start=40))
    assert first is again  # the static output, overwritten by the second replay
    expected = bert.module(input_ids=on_device(ids(2, 6, start=40))).last_hidden_state
    assert torch.equal(again.last_hidden_state, expected)
    assert backend.captures == [(2, 6)]
    snap = graphs.snapshot()
    assert (snap.captures, snap.replays, snap.graphs, snap.pool_bytes) == (1, 2, 1, 2 * MIB)
    assert snap.to_dict()["models"] == {
        "enc": {"shapes": ["2x6"], "pool_bytes": 2 * MIB, "off_reason": None, "too_large": None}
    }


def test_padded_batches_and_generators_run_eagerly(bert: LoadedModel) -> None:
    backend = FakeGraphBackend()
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB)
    assert graphs.replay(bert, [[5, 6, 7], [8, 9]], on_device([[5, 6, 7], [8, 9, 0]])) is None
    assert replay(graphs, bert, ids(MAX_GRAPH_ROWS + 1, 4)) is None
    gpt2 = tiny_loaded("gpt2", model_id="gen")
    assert replay(graphs, gpt2, ids(1, 4)) is None
    assert backend.captures == [] and graphs.snapshot().graphs == 0


def test_switched_off_nothing_is_captured(bert: LoadedModel) -> None:
    graphs = EncoderGraphs.off("switched off (--cuda-graphs off)")
    assert replay(graphs, bert, ids(1, 4)) is None
    snap = graphs.snapshot().to_dict()
    assert snap["enabled"] is False and snap["off_reason"] == "switched off (--cuda-graphs off)"
    assert snap["graphs"] == 0 and snap["budget_bytes"] == 0


# --- failures are data -------------------------------------------------------------------------------------------


def test_a_failed_capture_turns_graphs_off_for_that_model_and_hands_its_pool_back(
    bert: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    backend = FakeGraphBackend(fail={(1, 4): oom})
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB)
    other = tiny_loaded("bert-cls", model_id="cls")
    assert replay(graphs, bert, ids(2, 4)) is not None and replay(graphs, other, ids(2, 4)) is not None
    with caplog.at_level(logging.INFO, logger="colo.modelserver.graphs"):
        assert replay(graphs, bert, ids(1, 4)) is None  # the capture ran out of memory half-way
        assert replay(graphs, bert, ids(2, 4)) is None  # its earlier graph is gone too
        assert replay(graphs, bert, ids(3, 4)) is None  # and nothing new is captured for it
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "enc: CUDA graphs off: capture of 1x4 failed: CUDA out of memory" in warnings[0].message
    snap = graphs.snapshot()
    assert snap.models["enc"].shapes == () and snap.models["enc"].off_reason is not None
    assert snap.failures == 1 and snap.graphs == 1  # the other model's graph stays
    # What the failed capture and enc's earlier graph held went back; the other model's pool is untouched.
    assert backend.held_bytes() == 2 * MIB and backend.releases >= 1
    assert replay(graphs, other, ids(2, 4)) is not None and replay(graphs, other, ids(1, 5)) is not None


def test_a_failed_replay_turns_graphs_off_and_the_batch_runs_eagerly(bert: LoadedModel) -> None:
    backend = FakeGraphBackend(replay_fails={(1, 4)})
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB)
    assert replay(graphs, bert, ids(1, 4)) is None
    snap = graphs.snapshot()
    off = snap.models["enc"].off_reason
    assert off is not None and off.startswith("replay of 1x4 failed") and backend.held_bytes() == 0


# --- the batch path ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "bert-cls"])
def test_run_merged_answers_through_a_graph_as_eagerly(kind: str) -> None:
    model = tiny_loaded(kind, model_id="enc", max_batch=8, max_seq_len=16)
    backend = FakeGraphBackend()
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB)
    groups = [ids(2, 6), ids(1, 6, start=30)]
    raw = [kind == "bert", False]
    eager = run_merged(model, groups, device="cpu", clock=StepClock(), raw=raw)
    graphed = run_merged(model, groups, device="cpu", clock=StepClock(), raw=raw, graphs=graphs)
    assert backend.captures == [(3, 6)] and graphs.snapshot().replays == 1
    for e, g in zip(eager, graphed, strict=True):
        assert g.forward_ms > 0
        assert_same_outputs(e.outputs, g.outputs)


def test_each_batch_keeps_its_own_answer_though_the_next_replay_overwrites_the_static_output() -> None:
    model = tiny_loaded("bert", model_id="enc", max_batch=8, max_seq_len=16)
    graphs = EncoderGraphs(FakeGraphBackend(), budget_bytes=64 * MIB)
    first_rows, second_rows = ids(1, 5), ids(1, 5, start=50)
    first = run_merged(model, [first_rows], device="cpu", graphs=graphs)[0]
    second = run_merged(model, [second_rows], device="cpu", graphs=graphs)[0]
    assert graphs.snapshot().replays == 2
    assert_same_outputs(first.outputs, run_merged(model, [first_rows], device="cpu")[0].outputs)
    assert_same_outputs(second.outputs, run_merged(model, [second_rows], device="cpu")[0].outputs)
    assert first.outputs["embeddings"] != second.outputs["embeddings"]


def test_run_merged_runs_a_padded_batch_eagerly() -> None:
    model = tiny_loaded("bert", model_id="enc", max_batch=8, max_seq_len=16)
    backend = FakeGraphBackend()
    graphs = EncoderGraphs(backend, budget_bytes=64 * MIB)
    groups = [ids(1, 6), ids(1, 4)]
    graphed = run_merged(model, groups, device="cpu", graphs=graphs)
    assert backend.captures == [] and graphs.snapshot().replays == 0
    for e, g in zip(run_merged(model, groups, device="cpu"), graphed, strict=True):
        assert e.outputs == g.outputs


def assert_same_outputs(eager: dict[str, Any], graphed: dict[str, Any]) -> None:
    """Equal keys and values; floats (and numpy arrays) up to float rounding: the graph runs without a mask."""
    assert eager.keys() == graphed.keys()
    for name, value in eager.items():
        other = graphed[name]
        if hasattr(value, "shape"):
            assert value.shape == other.shape and torch.allclose(torch.as_tensor(value), torch.as_tensor(other), atol=1e-5)
        elif name in ("embeddings", "embedding_norms", "embeddings_head"):
            assert torch.allclose(torch.tensor(value), torch.tensor(other), atol=1e-5), name
        else:
            assert value == other, name
