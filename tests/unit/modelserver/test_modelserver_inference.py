"""One batch through tiny real models: padding, encoder heads, embeddings, greedy generation, OOM detection."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from modelserver_fakes import VOCAB, StepClock, tiny_loaded

from colo.modelserver import inference
from colo.modelserver.inference import is_oom, pad_batch, run_batch, run_merged, worst_case_rows


def test_pad_right_and_left() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, left=False, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 9, left=True, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        pad_batch([[1], []], 0, left=False, device="cpu")


def test_is_oom() -> None:
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 MiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_oom(ValueError("out of memory"))


def test_embeddings_are_mask_weighted_means_of_the_hidden_states() -> None:
    model = tiny_loaded("bert")
    clock = StepClock(step=0.002)
    res = run_batch(model, [[10, 11, 12], [13]], device="cpu", clock=clock)
    out = res.outputs
    assert out["kind"] == "embeddings" and out["embedding_shape"] == [2, 16]
    with torch.inference_mode():
        hidden = model.module(input_ids=torch.tensor([[13]])).last_hidden_state
    assert out["embeddings"][1] == pytest.approx(hidden[0].mean(0).tolist(), abs=1e-5)
    assert res.forward_ms == pytest.approx(2.0)  # one clock step between the two readings


def test_unpadded_groups_pool_with_a_plain_mean_and_answer_as_the_masked_mean() -> None:
    model = tiny_loaded("bert")
    lone, padded = run_merged(model, [[[10, 11, 12, 14]], [[13, 15], [16]]], device="cpu", raw=[False, True])
    with torch.inference_mode():
        hidden = model.module(input_ids=torch.tensor([[10, 11, 12, 14]])).last_hidden_state
    # The lone row (no padding) takes the plain mean; the other group is padded, so its mask weighs its rows.
    assert lone.outputs["embeddings"][0] == pytest.approx(hidden[0].mean(0).tolist(), abs=1e-5)
    assert lone.outputs["embedding_norms"][0] == pytest.approx(float(hidden[0].mean(0).norm()), abs=1e-5)
    alone = run_merged(model, [[[16]]], device="cpu", raw=[True])[0]
    assert padded.outputs["vectors"][1] == pytest.approx(alone.outputs["vectors"][0], abs=1e-5)
    hidden2 = torch.ones(2, 3, 4)
    hidden2[1, 2] = 100.0  # a padded position: the masked mean leaves it out, the plain mean would not
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert inference._mean_pool(hidden2, mask).tolist() == [[1.0] * 4, [1.0] * 4]
    assert inference._mean_pool(hidden2[:1], mask[:1], unpadded=True).tolist() == [[1.0] * 4]


def test_large_embeddings_return_a_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "FULL_EMBEDDING_VALUES", 20)
    out = run_batch(tiny_loaded("bert"), [[10, 11], [12, 13]], device="cpu").outputs
    assert "embeddings" not in out and len(out["embeddings_head"][0]) == inference.EMBEDDING_HEAD_VALUES
    assert len(out["embedding_norms"]) == 2


def test_classification_and_token_heads() -> None:
    cls = run_batch(tiny_loaded("bert-cls"), [[10, 11], [12]], device="cpu").outputs
    assert cls["kind"] == "classification" and cls["logits_shape"] == [2, 3]
    assert all(0 <= p < 3 for p in cls["predictions"])
    tok = run_batch(tiny_loaded("bert-mlm"), [[10, 11, 12], [13]], device="cpu").outputs
    assert tok["kind"] == "token_predictions" and [len(p) for p in tok["predictions"]] == [3, 1]


def test_encoder_output_shapes_without_a_model_output_class() -> None:
    mask = torch.ones(1, 2, dtype=torch.long)
    out = inference._encoder_outputs((torch.ones(1, 2, 4),), mask)
    assert out["embeddings"] == [[1.0, 1.0, 1.0, 1.0]]
    out = inference._encoder_outputs(SimpleNamespace(prediction_logits=torch.zeros(1, 5)), mask)
    assert out["kind"] == "classification"
    with pytest.raises(TypeError):
        inference._encoder_outputs(SimpleNamespace(), mask)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_generation_returns_only_new_ids(kind: str) -> None:
    model = tiny_loaded(kind)
    out = run_batch(model, [[10, 11, 12], [13]], device="cpu", max_new_tokens=3, exact_new_tokens=True).outputs
    assert out["kind"] == "generation"
    assert [len(r) for r in out["generated_ids"]] == [3, 3] and out["generated_tokens"] == 6
    assert all(0 <= i < VOCAB for r in out["generated_ids"] for i in r)
    assert "texts" not in out  # the hash tokenizer cannot decode


def test_worst_case_rows_fill_batch_and_sequence() -> None:
    rows = worst_case_rows(tiny_loaded("bert", max_batch=3, max_seq_len=7))
    assert len(rows) == 3 and all(len(r) == 7 for r in rows)
    assert all(1 <= i < VOCAB for r in rows for i in r)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_merged_generation_answers_each_request_as_alone(kind: str) -> None:
    """Two requests of one generator in one batch: each gets its own rows, cut to its own max_new_tokens, the
    same greedy ids as alone (random-weight tiny models rarely hit end-of-sequence; min_new_tokens keeps the
    alone runs full length)."""
    import torch

    from colo.modelserver.inference import generate_merged

    torch.manual_seed(0)
    model = tiny_loaded(kind)
    a_rows, b_rows = [[10, 11, 12]], [[13], [14, 15]]
    merged = generate_merged(model, [(a_rows, 2), (b_rows, 4)], device="cpu")
    assert [len(r) for r in merged[0].outputs["generated_ids"]] == [2]
    assert [len(r) for r in merged[1].outputs["generated_ids"]] == [4, 4]
    assert merged[1].outputs["generated_tokens"] == 8 and merged[0].forward_ms == merged[1].forward_ms
    alone_a = run_batch(model, a_rows, device="cpu", max_new_tokens=2, exact_new_tokens=True).outputs
    assert merged[0].outputs["generated_ids"] == alone_a["generated_ids"]
    (single,) = generate_merged(model, [(b_rows, 3)], device="cpu")  # one request: run as it is
    assert [len(r) for r in single.outputs["generated_ids"]] == [3, 3]
