"""The workload classes an instance process builds from a kind name (``colo.bench.loads.KINDS``), met by name
here: the registry maps each kind to its class, the shared static-decode loop, the torch helpers."""

from __future__ import annotations

import pytest

from colo.bench.loads import KINDS, make_workload
from colo.bench.loads.cpu import CpuWorkload
from colo.bench.loads.static_decode import StaticDecodeWorkload


def test_every_kind_names_a_class_that_exists() -> None:
    import importlib

    for kind, (module, name) in KINDS.items():
        assert isinstance(getattr(importlib.import_module(module), name), type), kind


def test_cpu_workload_counts_items_and_fails_where_told() -> None:
    w = make_workload("cpu", {"sleep_secs": 0.0, "work": 10, "items_per_request": 2.5})
    assert isinstance(w, CpuWorkload)
    assert w.prepare() == {"device": "cpu"}
    out = w.request()
    assert out.items == 2.5 and out.extra == {"checksum": float(45 % 7)}
    with pytest.raises(RuntimeError, match="fail in prepare"):
        CpuWorkload(fail_in="prepare").prepare()
    with pytest.raises(RuntimeError, match="fail in request"):
        CpuWorkload(fail_in="request").request()


class _Counting(StaticDecodeWorkload):
    """The shared loop with a step that only counts, and a reset that records each wrap."""

    default_max_len, default_start_pos = 10, 2

    def prepare(self) -> dict[str, object]:
        self.steps = 0
        self.resets = 0

        def step() -> None:
            self.steps += 1

        def reset() -> None:
            self.resets += 1

        self._ready(step, reset, lambda: None)
        return {}


def test_static_decode_loop_counts_tokens_and_wraps_before_the_cache_ends() -> None:
    w = _Counting(batch_size=3, tokens_per_request=3)
    w.prepare()  # one untimed request: positions 2..4
    assert (w.steps, w.resets) == (3, 0)
    assert w.request().items == 9.0  # 5..7
    w.request()  # 8 + 3 >= 10: rewinds to 2 first
    assert (w.steps, w.resets) == (9, 1)
    w.close()
    with pytest.raises(AssertionError, match="prepare"):
        w.request()


def test_static_decode_settings_must_leave_room() -> None:
    with pytest.raises(ValueError, match="must leave room for 8 tokens in 10"):
        _Counting(tokens_per_request=8)
    with pytest.raises(ValueError, match="must be positive"):
        _Counting(batch_size=0)


def test_torch_helpers_on_cpu() -> None:
    torch = pytest.importorskip("torch")
    from colo.bench.loads.graphs import resolve_device, torch_dtype, torch_facts

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="use float16, bfloat16 or float32"):
        torch_dtype("int8")
    facts = torch_facts()
    assert facts["torch"] == torch.__version__ and "device" in facts


def test_decode_and_encoder_kinds_build_their_classes() -> None:
    pytest.importorskip("torch")
    from colo.bench.loads.decode import DecodeWorkload
    from colo.bench.loads.encoder import EncoderWorkload

    decode = make_workload("decode", {"shape": "tiny", "max_len": 16, "start_pos": 2, "tokens_per_request": 4})
    assert isinstance(decode, DecodeWorkload) and decode.shape.name == "tiny" and decode.dtype == "bfloat16"
    encoder = make_workload("encoder", {"models": ["a", "b"], "batch_size": 2, "seq_len": 8})
    assert isinstance(encoder, EncoderWorkload) and encoder.model_ids == ["a", "b"]
    with pytest.raises(ValueError, match="must be positive"):
        EncoderWorkload(model="a", seq_len=0)
