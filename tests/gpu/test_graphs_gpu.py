"""CUDA-graph replay of encoder forwards (``colo.modelserver.graphs``, issue 22) on a real GPU, in process, no MPS:
bert-tiny and all-MiniLM-L6-v2 (the catalog's architectures, random weights, float16). About 30 s.

1. Per model, 1 × 16 and 8 × 128 on a device thread of its own stream, as the agent runs them: the batch answered
   from a graph (the first captured, a second input replayed) equals the eager answer within float16
   tolerance; the pools stay within the budget the agent would take; the mean ``forward_ms`` of each::

       GPU-RESULT graphs model=... shape=1x16 eager_ms=... graph_ms=... speedup=...x first_ms=...
       GPU-RESULT graphs model=... pools_mib=... budget_mib=... graphs=2 replays=... failures=0

2. The agent's runtime (worst-case warm-up) answers lone 1 × 16 requests from one graph, equal to its answers
   with ``cuda_graphs=False``; ``/health``'s ``cuda_graphs`` says so::

       GPU-RESULT graphs agent lone=1x16 forward_p50_ms on=... off=... total_p50_ms on=... off=... pools_mib=...

3. A forward that cannot be captured (it reads a value back to the host) turns graphs off for that model, the
   batch is answered eagerly and correctly, and another model still captures afterwards::

       GPU-RESULT graphs capture_failure reason="..." reserved_left_mib=...
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import numpy as np
import pytest
from device_thread import DEVICE, on_device_thread

from colo.modelserver.cuda_graphs import TorchGraphBackend
from colo.modelserver.graphs import EncoderGraphs, graph_budget_bytes, headroom_bytes
from colo.modelserver.inference import BatchResult, run_merged
from colo.modelserver.loading import LoadedModel, load_model
from colo.modelserver.runtime import AgentRuntime, InferInput
from colo.spec.config import ModelSpec

pytestmark = pytest.mark.gpu

BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SHAPES = ((1, 16), (8, 128))
SPEC = ModelSpec(dtype="float16", batch_size=8, max_seq_len=128)
TIMED = 300
UNTIMED = 20
LONE_REQUESTS = 300
FLOAT16 = {"rtol": 2e-2, "atol": 2e-2}
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def rows(shape: tuple[int, int], offset: int) -> list[list[int]]:
    count, width = shape
    return [[1000 + (r * 31 + c * 7 + offset) % 20000 for c in range(width)] for r in range(count)]


def batch(model: LoadedModel, ids: list[list[int]], graphs: EncoderGraphs | None) -> BatchResult:
    return run_merged(model, [ids], device=DEVICE, raw=[True], graphs=graphs)[0]


def mean_forward_ms(model: LoadedModel, ids: list[list[int]], graphs: EncoderGraphs | None) -> float:
    for _ in range(UNTIMED):
        batch(model, ids, graphs)
    return statistics.fmean(batch(model, ids, graphs).forward_ms for _ in range(TIMED))


def agent_graphs() -> EncoderGraphs:
    """Graphs with the budget an agent would take from the memory left now."""
    backend = TorchGraphBackend(DEVICE)
    return EncoderGraphs(backend, budget_bytes=graph_budget_bytes(headroom_bytes(backend.memory())))


@pytest.mark.parametrize("model_id", [BERT_TINY, MINILM])
def test_graphs_answer_as_eager_forwards_within_the_budget(model_id: str) -> None:
    def work() -> tuple[list[str], Any]:
        model = load_model(model_id, SPEC, device=DEVICE)
        batch(model, rows((8, 128), 9), None)  # the agent's warm-up: this stream's cuBLAS workspace is taken now
        graphs = agent_graphs()
        lines = []
        for shape in SHAPES:
            first, second = rows(shape, 0), rows(shape, 1)
            captured = batch(model, first, graphs)
            replayed = batch(model, second, graphs)
            assert shape in graphs.snapshot().models[model_id].shapes, graphs.snapshot()
            for got, ids in ((captured, first), (replayed, second)):
                eager = batch(model, ids, None)
                np.testing.assert_allclose(got.outputs["vectors"], eager.outputs["vectors"], **FLOAT16)
            eager_ms = mean_forward_ms(model, first, None)
            graph_ms = mean_forward_ms(model, first, graphs)
            lines.append(
                f"GPU-RESULT graphs model={model_id} shape={shape[0]}x{shape[1]} eager_ms={eager_ms:.3f} "
                f"graph_ms={graph_ms:.3f} speedup={eager_ms / graph_ms:.1f}x first_ms={captured.forward_ms:.1f}"
            )
        return lines, graphs.snapshot()

    lines, snap = on_device_thread(work)
    lines.append(
        f"GPU-RESULT graphs model={model_id} pools_mib={snap.pool_bytes / MIB:.1f} "
        f"budget_mib={snap.budget_bytes / MIB:.1f} graphs={snap.graphs} replays={snap.replays} failures={snap.failures}"
    )
    print("\n".join(lines), flush=True)
    assert snap.failures == 0 and snap.graphs == len(SHAPES) and snap.full is None, snap
    assert 0 < snap.pool_bytes <= snap.budget_bytes, snap


def test_an_agent_answers_lone_requests_from_a_graph_as_without() -> None:
    import torch

    lone = rows((1, 16), 0)
    seen: dict[bool, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    for on in (True, False):
        torch.manual_seed(0)  # the same random weights in both agents
        runtime = AgentRuntime(
            agent=f"graphs-{'on' if on else 'off'}", specs=[(BERT_TINY, SPEC)], device=DEVICE, worst_case=True,
            cuda_graphs=on,
        )
        runtime.load()
        try:
            answers = [runtime.infer(InferInput(input_ids=lone, raw=True)) for _ in range(LONE_REQUESTS)]
            seen[on] = answers, runtime.health()
        finally:
            runtime.close()
    (with_graphs, health), (without, health_off) = seen[True], seen[False]
    np.testing.assert_allclose(with_graphs[-1]["vectors"], without[-1]["vectors"], **FLOAT16)
    graphs = health["cuda_graphs"]

    def p50(answers: list[dict[str, Any]], key: str) -> float:
        return statistics.median(a["timing"][key] for a in answers[20:])

    print(
        f"GPU-RESULT graphs agent lone=1x16 forward_p50_ms on={p50(with_graphs, 'forward_ms'):.3f} "
        f"off={p50(without, 'forward_ms'):.3f} total_p50_ms on={p50(with_graphs, 'total_ms'):.3f} "
        f"off={p50(without, 'total_ms'):.3f} pools_mib={graphs['pool_bytes'] / MIB:.1f} "
        f"budget_mib={graphs['budget_bytes'] / MIB:.1f}",
        flush=True,
    )
    assert graphs["enabled"] and graphs["models"][BERT_TINY]["shapes"] == ["1x16"], graphs
    assert graphs["replays"] == LONE_REQUESTS and graphs["failures"] == 0, graphs
    assert 0 < graphs["pool_bytes"] <= graphs["budget_bytes"], graphs
    assert health_off["cuda_graphs"]["enabled"] is False and health_off["cuda_graphs"]["graphs"] == 0


class ReadsBack:
    """A module whose forward reads one value back to the host: fine eagerly, not allowed while capturing."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, input_ids: Any, attention_mask: Any = None) -> Any:
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
        self.seen = float(out.last_hidden_state[0, 0, 0])  # a device→host copy and a wait
        return out


def test_a_failed_capture_turns_graphs_off_and_the_batch_is_answered_eagerly() -> None:
    import torch

    def work() -> tuple[Any, int, int]:
        plain = load_model(BERT_TINY, SPEC, device=DEVICE)
        batch(plain, rows((8, 128), 9), None)  # the agent's warm-up: this stream's cuBLAS workspace is taken now
        reading = dataclasses.replace(plain, module=ReadsBack(plain.module))
        graphs = agent_graphs()
        ids = rows((1, 16), 0)
        torch.cuda.empty_cache()
        before = int(torch.cuda.memory_reserved(DEVICE))
        answered = batch(reading, ids, graphs)  # the capture fails; the batch runs eagerly
        torch.cuda.empty_cache()
        # What the failed capture may have kept (some torch versions keep its pool): printed, not asserted.
        reserved_left = int(torch.cuda.memory_reserved(DEVICE)) - before
        np.testing.assert_allclose(answered.outputs["vectors"], batch(plain, ids, None).outputs["vectors"], **FLOAT16)
        again = batch(reading, ids, graphs)  # graphs stay off for it: eager again
        np.testing.assert_allclose(again.outputs["vectors"], answered.outputs["vectors"], **FLOAT16)
        others = agent_graphs()  # the device still captures and replays
        np.testing.assert_allclose(
            batch(plain, rows((2, 32), 3), others).outputs["vectors"],
            batch(plain, rows((2, 32), 3), None).outputs["vectors"],
            **FLOAT16,
        )
        return graphs.snapshot(), others.snapshot().replays, reserved_left

    snap, replays, reserved_left = on_device_thread(work)
    reason = snap.models[BERT_TINY].off_reason
    print(f'GPU-RESULT graphs capture_failure reason="{reason}" reserved_left_mib={reserved_left / MIB:.1f}', flush=True)
    assert reason is not None and reason.startswith("capture of 1x16 failed"), snap
    assert snap.failures == 1 and snap.graphs == 0 and snap.pool_bytes == 0, snap
    assert replays == 1
