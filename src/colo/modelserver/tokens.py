"""Texts to token ids for the built-in agent: the model's real tokenizer when it is on disk, else a hash.

The built-in agent must run offline with random weights, where no tokenizer files exist. Then texts become
ids deterministically: each word (or punctuation mark, long words in 4-character pieces) is hashed with
BLAKE2b into ``[reserved, vocab_size)``, so the same text always gives the same ids, every id is valid for the
model's embedding table, and the low ids (where special tokens live) are never produced. ``/health`` says
which one is in use (``"tokenizer": "hash fallback"``).

transformers is imported inside :func:`load_tokenizer` only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

HASH_FALLBACK = "hash fallback"
_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_PIECE_CHARS = 4
_LONG_WORD_CHARS = 6


@dataclass(frozen=True)
class Encoded:
    """Token ids per text (unpadded) and whether any text was cut to ``max_len``."""

    ids: list[list[int]]
    truncated: bool


class Tokenizer(Protocol):
    """What the agent needs from a tokenizer."""

    @property
    def description(self) -> str:
        """Shown in /health: ``"hash fallback"`` or the real tokenizer's class and source."""
        ...

    @property
    def pad_id(self) -> int:
        """Id used to pad rows of a batch (masked out by the attention mask)."""
        ...

    def encode(self, texts: Sequence[str], max_len: int) -> Encoded:
        """Ids for each text, at most ``max_len`` (>= 1) per text; an empty text gives one id."""
        ...

    def decode(self, ids: Sequence[int]) -> str | None:
        """Text for ids, or None when this tokenizer cannot decode (the hash fallback)."""
        ...


class HashTokenizer:
    """Deterministic word-hash ids within ``[reserved, vocab_size)``; never decodes."""

    def __init__(self, vocab_size: int, *, pad_id: int = 0, reserved: int | None = None) -> None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size {vocab_size} is too small for hashed ids")
        self.vocab_size = vocab_size
        self._pad_id = pad_id
        # Keep clear of the special tokens at the start of most vocabularies (BERT's [CLS] is 101).
        self.reserved = min(1000, vocab_size // 10) if reserved is None else reserved
        if not 0 <= self.reserved < vocab_size:
            raise ValueError(f"reserved {self.reserved} must be in [0, {vocab_size})")

    @property
    def description(self) -> str:
        return HASH_FALLBACK

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def _id(self, piece: str) -> int:
        digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
        return self.reserved + int.from_bytes(digest, "little") % (self.vocab_size - self.reserved)

    def _pieces(self, text: str) -> list[str]:
        pieces: list[str] = []
        for word in _WORD_RE.findall(text.lower()):
            if len(word) <= _LONG_WORD_CHARS:
                pieces.append(word)
            else:
                pieces += [word[i : i + _PIECE_CHARS] for i in range(0, len(word), _PIECE_CHARS)]
        return pieces or [""]

    def encode(self, texts: Sequence[str], max_len: int) -> Encoded:
        if max_len < 1:
            raise ValueError(f"max_len {max_len} must be >= 1")
        rows: list[list[int]] = []
        truncated = False
        for text in texts:
            ids = [self._id(p) for p in self._pieces(text)]
            if len(ids) > max_len:
                ids, truncated = ids[:max_len], True
            rows.append(ids)
        return Encoded(rows, truncated)

    def decode(self, ids: Sequence[int]) -> str | None:
        return None


class HfTokenizer:
    """A transformers tokenizer loaded from local files (no network).

    A fast tokenizer encodes through its own copy of the Rust backend (:func:`_backend_copy`): the same ids as
    ``tokenizer(texts, add_special_tokens=True)``, without transformers' Python around each call (a third of
    the time for 8 texts of 128 tokens), and the GIL released while it runs, so other threads go on meanwhile.
    The copy is never changed after it is made, so any number of threads may encode at once (transformers sets
    truncation and padding on its backend at every call: a second thread inside it then fails with "Already
    borrowed"). A slow (Python) tokenizer is called as transformers calls it.
    """

    def __init__(self, tokenizer: Any, source: str) -> None:
        self._tok = tokenizer
        self._source = source
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self._pad_id = int(pad)
        self._encode_batch = _backend_encoder(tokenizer)

    @property
    def description(self) -> str:
        return f"{type(self._tok).__name__} ({self._source})"

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def encode(self, texts: Sequence[str], max_len: int) -> Encoded:
        if max_len < 1:
            raise ValueError(f"max_len {max_len} must be >= 1")
        full: list[list[int]]
        if self._encode_batch is not None:
            full = [e.ids for e in self._encode_batch(list(texts), add_special_tokens=True)]
        else:
            called = self._tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
            full = [[int(i) for i in ids] for ids in called]
        rows: list[list[int]] = []
        truncated = False
        for ids in full:
            ids = ids or [self._pad_id]
            if len(ids) > max_len:
                ids, truncated = ids[:max_len], True
            rows.append(ids)
        return Encoded(rows, truncated)

    def decode(self, ids: Sequence[int]) -> str | None:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> str | None:
        """The chat as one prompt through the tokenizer's chat template; None when it has none (or it fails
        on these messages)."""
        if not getattr(self._tok, "chat_template", None):
            return None
        try:
            text = self._tok.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # a template that refuses these roles: the caller uses the plain form
            log.debug("chat template failed (%s); plain prompt", exc)
            return None
        return str(text)


def _backend_copy(tok: Any) -> Any | None:
    """A copy of ``tok``'s Rust backend (``tokenizers.Tokenizer``) set as transformers sets its own for
    ``tok(texts, add_special_tokens=True)``: no truncation, no padding, special tokens in the text not split
    unless ``tok`` splits them. None when ``tok`` has no backend (a slow tokenizer) or it cannot be copied."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_truncation()
        copy.no_padding()
        copy.encode_special_tokens = bool(getattr(tok, "split_special_tokens", False))
    except Exception as exc:  # an older tokenizers, a backend that does not serialise: transformers' way
        log.debug("tokenizer backend not copied (%s: %s); encoding through transformers", type(exc).__name__, exc)
        return None
    return copy


_PROBE_TEXTS = ("colo probe text", "", "Zürich, 1990s — naïve café!", "[CLS] a [SEP] b")


def _backend_encoder(tok: Any) -> Any | None:
    """``encode_batch`` of :func:`_backend_copy` (``encode_batch_fast`` when there: no character offsets),
    used only when it gives what ``tok(texts, add_special_tokens=True)`` gives on a few probe texts; else None."""
    copy = _backend_copy(tok)
    if copy is None:
        return None
    encode = getattr(copy, "encode_batch_fast", None) or copy.encode_batch
    texts = list(_PROBE_TEXTS)
    try:
        called = tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
        same = [e.ids for e in encode(texts, add_special_tokens=True)] == [[int(i) for i in ids] for ids in called]
    except Exception as exc:  # a backend that cannot encode these: transformers' way
        log.debug("tokenizer backend probe failed (%s: %s); encoding through transformers", type(exc).__name__, exc)
        return None
    if not same:
        log.info("tokenizer backend encodes differently from %s; encoding through transformers", type(tok).__name__)
        return None
    return encode


def _unusable(tok: Any, vocab_size: int) -> str | None:
    """Why a loaded tokenizer cannot serve this model, or None.

    transformers builds an empty tokenizer from a folder holding only config.json; and a tokenizer with more
    ids than the model's embedding table would index past it.
    """
    try:
        size = len(tok)
        probe = tok(["colo probe text"], add_special_tokens=False)["input_ids"][0]
    except Exception as exc:  # a broken tokenizer file fails in many ways; any of them means "don't use it"
        return f"{type(exc).__name__}: {exc}"
    if size < 2 or not probe:
        return f"it has {size} tokens and encodes nothing"
    if size > vocab_size:
        return f"it has {size} tokens, more than the model's vocabulary of {vocab_size}"
    return None


def load_tokenizer(model_id: str, path: str | None, vocab_size: int, *, real_weights: bool) -> Tokenizer:
    """The model's tokenizer from ``path`` or the local Hugging Face cache, else a :class:`HashTokenizer`.

    Only local files are read (``local_files_only=True``): the agent never reaches the network for a
    tokenizer. With random weights a real tokenizer would still be valid (ids are within the same vocabulary),
    so it is used whenever found and usable (non-empty, no ids past ``vocab_size``). Never raises for a
    missing tokenizer; logs which one is used.
    """
    source = path if path else model_id
    if path and not os.path.isdir(path):
        log.info("%s: %s is not a directory; tokenizer: %s", model_id, path, HASH_FALLBACK)
        return HashTokenizer(vocab_size)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception as exc:  # missing files show up as OSError, ValueError or others depending on the model
        log.info("%s: no local tokenizer (%s); tokenizer: %s", model_id, type(exc).__name__, HASH_FALLBACK)
        return HashTokenizer(vocab_size)
    problem = _unusable(tok, vocab_size)
    if problem:
        log.info("%s: local tokenizer unusable (%s); tokenizer: %s", model_id, problem, HASH_FALLBACK)
        return HashTokenizer(vocab_size)
    origin = "local path" if path else "hugging face cache"
    if not real_weights:
        origin += ", weights random"
    log.info("%s: tokenizer %s from %s", model_id, type(tok).__name__, origin)
    return HfTokenizer(tok, f"{origin}: {source}")


def chat_prompt(tokenizer: Tokenizer, messages: Sequence[tuple[str, str]]) -> str:
    """One prompt text for a chat of ``(role, content)`` messages: the tokenizer's own chat template when it
    has one, else each message as ``role: content`` on its own line, ending with ``assistant:`` (what a
    plain language model continues)."""
    if isinstance(tokenizer, HfTokenizer):
        templated = tokenizer.apply_chat_template(messages)
        if templated is not None:
            return templated
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"
