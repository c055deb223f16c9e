"""Texts to ids: the hash fallback is deterministic and in range; a real tokenizer on disk is preferred."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# --- a fast tokenizer encodes through its own copy of the Rust backend (issue 22) ----------------------------


def _bench_wordpiece() -> Any:
    """The embeddings bench's WordPiece tokenizer (BERT's normaliser and pre-tokeniser, [CLS] … [SEP])."""
    from colo.bench.loads.embeddings_model import vocabulary, wordpiece_tokenizer

    return wordpiece_tokenizer(vocabulary(512), 512)


def _byte_level_bpe() -> Any:
    """A byte-level BPE tokenizer (GPT-2's kind) with a post-processor adding <s> … </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["the market report shows growth in energy prices after a long winter"] * 20, trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _transformers_ids(tok: Any, texts: list[str], max_len: int) -> tuple[list[list[int]], bool]:
    """What the agent answered before the backend was used directly: transformers' call, cut to ``max_len``."""
    rows = [list(r) or [int(tok.pad_token_id or 0)] for r in tok(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    return [r[:max_len] for r in rows], any(len(r) > max_len for r in rows)


@pytest.mark.parametrize("make", [_bench_wordpiece, _byte_level_bpe], ids=["wordpiece", "byte-level-bpe"])
@settings(max_examples=80, deadline=None)
@given(texts=st.lists(st.text(max_size=120), min_size=1, max_size=6), max_len=st.integers(1, 64))
def test_the_backend_gives_transformers_ids(make: Any, texts: list[str], max_len: int) -> None:
    tok = make()
    ours = HfTokenizer(tok, "test")
    assert ours._encode_batch is not None  # the backend's own path, not transformers'
    enc = ours.encode(texts, max_len)
    assert (enc.ids, enc.truncated) == _transformers_ids(tok, texts, max_len)


def test_the_backend_copy_never_truncates_or_pads_whatever_the_original_says() -> None:
    tok = _bench_wordpiece()
    ours = HfTokenizer(tok, "test")
    tok.backend_tokenizer.enable_truncation(max_length=4)  # transformers changes its own backend per call
    tok.backend_tokenizer.enable_padding(length=300)
    text = "the market report shows growth in energy prices"  # the bench's first 8 words: ids 104 … 111
    assert ours.encode([text, "winter"], 64).ids == [[101, *range(104, 112), 102], [101, 115, 102]]


def test_threads_encoding_at_once_each_get_their_own_ids() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from colo.bench.loads.embeddings import text_of

    ours = HfTokenizer(_bench_wordpiece(), "test")
    batches = [[text_of(40 + i % 50, seed=i * 8 + r) for r in range(8)] for i in range(64)]
    alone = [ours.encode(b, 256).ids for b in batches]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: ours.encode(b, 256).ids, batches))
    assert together == alone and len({str(a) for a in alone}) == 64


def test_a_tokenizer_without_a_backend_or_a_differing_one_encodes_through_transformers() -> None:
    calls: list[list[str]] = []

    class Slow:
        """A transformers-like tokenizer without a Rust backend (a slow tokenizer)."""

        pad_token_id = 0
        eos_token_id = None

        def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, list[list[int]]]:
            calls.append(texts)
            return {"input_ids": [[7] * len(t.split()) for t in texts]}

    slow = HfTokenizer(Slow(), "test")
    assert slow._encode_batch is None
    assert slow.encode(["a b c", ""], 2).ids == [[7, 7], [0]] and calls == [["a b c", ""]]

    class Differing(Slow):
        """A backend that does not encode as the tokenizer itself does (the copy is then left unused)."""

        backend_tokenizer = _bench_wordpiece().backend_tokenizer

    assert HfTokenizer(Differing(), "test")._encode_batch is None
