"""Fast random-weight builds: the same parameters, buffers, dtypes and tying as transformers' own build (so the
same memory), every weight filled once with finite values, and the modeling module imported by preload."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from colo.memory import build as build_mod
from colo.memory.build import build, hf_config, preload, resolve_source

MODELS = ["google/bert_uncased_L-2_H-128_A-2", "distilgpt2", "t5-small"]


def _plain(model_id: str, dtype: str) -> Any:
    """The build as it was before: transformers' from_config with its own (double) initialisation."""
    source = resolve_source(model_id, random_weights=True)
    config = hf_config(source)
    with torch.device("cpu"):
        return build_mod._auto_class(source.head).from_config(config, dtype=getattr(torch, dtype))


def _layout(module: Any) -> tuple[list[tuple[str, tuple[int, ...], torch.dtype]], list[list[str]]]:
    params = [(n, tuple(p.shape), p.dtype) for n, p in module.named_parameters(remove_duplicate=False)]
    params += [(n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()]
    shared: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        shared.setdefault(p.data_ptr(), []).append(name)
    return params, sorted(names for names in shared.values() if len(names) > 1)


@pytest.mark.parametrize("model_id", MODELS)
def test_fast_build_has_the_plain_build_layout(model_id: str) -> None:
    fast = build(model_id, random_weights=True).module
    plain = _plain(model_id, "float32")
    assert _layout(fast) == _layout(plain)
    for (name, buf), (_, ref) in zip(fast.named_buffers(), plain.named_buffers(), strict=True):
        assert torch.equal(buf, ref), name  # position ids and the like are built, not randomised
    for name, p in fast.named_parameters():
        assert torch.isfinite(p).all(), name
        if p.dim() >= 2:
            assert p.std().item() > 0, name  # filled, not left empty
    assert not fast.training


def test_fast_build_output_is_finite_and_half_precision_kept() -> None:
    built = build(MODELS[0], dtype="float16", random_weights=True)
    assert {p.dtype for p in built.module.parameters()} == {torch.float16}
    with torch.inference_mode():
        out = built.module.float()(input_ids=torch.tensor([[101, 2000, 102]])).last_hidden_state
    assert torch.isfinite(out).all()


def test_meta_build_allocates_nothing() -> None:
    module = build(MODELS[0], device="meta", random_weights=True).module
    assert all(p.is_meta for p in module.parameters())
    assert sum(p.numel() for p in module.parameters()) == 4_385_920


def test_preload_imports_the_modeling_module() -> None:
    preload(MODELS[0])
    assert "transformers.models.bert.modeling_bert" in sys.modules
