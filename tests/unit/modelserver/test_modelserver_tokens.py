"""Texts to ids: the hash fallback is deterministic and in range; a real tokenizer on disk is preferred."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colo.modelserver.tokens import HASH_FALLBACK, HashTokenizer, HfTokenizer, load_tokenizer


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=80), min_size=1, max_size=5), vocab=st.integers(2, 60000),
       max_len=st.integers(1, 40))
def test_hash_ids_are_deterministic_bounded_and_in_vocab(texts: list[str], vocab: int, max_len: int) -> None:
    tok = HashTokenizer(vocab)
    first = tok.encode(texts, max_len)
    assert first == HashTokenizer(vocab).encode(texts, max_len)
    assert len(first.ids) == len(texts)
    for row in first.ids:
        assert 1 <= len(row) <= max_len
        assert all(tok.reserved <= i < vocab for i in row)


def test_hash_words_pieces_and_truncation() -> None:
    tok = HashTokenizer(30522)
    assert tok.reserved == 1000
    enc = tok.encode(["Hello, world", "hello world", "internationalisation"], 64)
    assert len(enc.ids[0]) == 3 and enc.ids[0][0] == enc.ids[1][0] and enc.ids[0][2] == enc.ids[1][1]
    assert len(enc.ids[2]) == 5  # 20 characters in 4-character pieces
    assert not enc.truncated
    cut = tok.encode(["a b c d e f"], 4)
    assert cut.truncated and len(cut.ids[0]) == 4
    assert tok.decode([1001]) is None and tok.description == HASH_FALLBACK and tok.pad_id == 0


def test_hash_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        HashTokenizer(1)
    with pytest.raises(ValueError):
        HashTokenizer(10, reserved=10)
    with pytest.raises(ValueError):
        HashTokenizer(10).encode(["x"], 0)


def test_missing_tokenizer_falls_back(tmp_path: Path) -> None:
    assert load_tokenizer("no-such-org/no-such-model-xyz", None, 500, real_weights=False).description == HASH_FALLBACK
    assert load_tokenizer("m", str(tmp_path), 500, real_weights=False).description == HASH_FALLBACK
    assert load_tokenizer("m", str(tmp_path / "absent"), 500, real_weights=False).description == HASH_FALLBACK


def test_real_tokenizer_on_disk_is_used(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "news": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path)
    tok = load_tokenizer("m", str(tmp_path), 5, real_weights=True)
    assert isinstance(tok, HfTokenizer)
    assert "local path" in tok.description and tok.pad_id == 0
    enc = tok.encode(["hello world news", "zzz"], 2)
    assert enc.ids == [[2, 3], [1]] and enc.truncated
    assert tok.decode([2, 3]) == "hello world"


def test_unusable_tokenizers_fall_back(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "news": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path)
    # More ids than the model's embedding table: would index past it.
    assert load_tokenizer("m", str(tmp_path), 3, real_weights=True).description == HASH_FALLBACK
    # transformers makes an empty tokenizer from a folder with only config.json.
    only_config = tmp_path / "only-config"
    GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2).save_pretrained(only_config)
    assert load_tokenizer("m", str(only_config), 50, real_weights=False).description == HASH_FALLBACK
