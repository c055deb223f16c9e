"""Loading from a local path: real weights and tokenizer when saved there, random weights from its config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from modelserver_fakes import tiny_module

from colo.errors import ConfigError
from colo.modelserver.loading import RANDOM_WEIGHTS, load_model, resolve_device
from colo.modelserver.tokens import HASH_FALLBACK
from colo.spec.config import ModelSpec


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 101)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)


def test_local_weights_and_tokenizer_are_used(tmp_path: Path) -> None:
    saved = tiny_module("bert-cls")
    saved.save_pretrained(tmp_path)
    _save_tokenizer(tmp_path)
    loaded = load_model("my-org/tiny", ModelSpec(path=str(tmp_path), max_seq_len=100), device="cpu")
    assert loaded.weights.startswith("local weights at") and str(tmp_path) in loaded.weights
    assert loaded.task == "encoder" and loaded.vocab_size == 101
    assert "local path" in loaded.tokenizer.description
    assert loaded.limits.max_seq_len == 64  # cut to the saved config's 64 positions
    for name, value in saved.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value), name
    assert loaded.tokenizer.encode(["w5 w7"], 8).ids == [[5, 7]]


def test_config_without_weights_gives_random_weights(tmp_path: Path) -> None:
    config = tiny_module("gpt2").config
    config.architectures = ["GPT2LMHeadModel"]  # as save_pretrained of the model writes it
    config.save_pretrained(tmp_path)
    loaded = load_model("my-org/gen", ModelSpec(path=str(tmp_path), max_seq_len=40, new_tokens=4), device="cpu")
    assert loaded.weights != RANDOM_WEIGHTS and loaded.weights.startswith("random weights (config at")
    assert loaded.task == "generator" and loaded.tokenizer.description == HASH_FALLBACK
    assert (loaded.limits.max_seq_len, loaded.limits.new_tokens) == (40, 4)


def test_devices() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")
