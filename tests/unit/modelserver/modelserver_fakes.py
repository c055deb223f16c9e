"""Tiny real transformers models and a step clock for the built-in agent's CPU tests (each builds in ms)."""

from __future__ import annotations

import time
from typing import Any

import torch
import transformers

from colo.modelserver.loading import LoadedModel, ModelLimits
from colo.modelserver.tokens import HashTokenizer, HfTokenizer
from colo.spec.config import ModelSpec, Task

VOCAB = 101


class StepClock:
    """A :class:`colo.clock.Clock` whose monotonic clock advances ``step`` seconds per reading (so timings are
    known exactly); its wall clock reads the same, and ``sleep`` really waits (threads that poll stay polite)."""

    def __init__(self, start: float = 1000.0, step: float = 0.001) -> None:
        self.now = start
        self.step = step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now

    def wall(self) -> float:
        return self.now

    def sleep(self, secs: float) -> None:
        time.sleep(max(secs, 0.0))


def _quiet() -> None:
    transformers.logging.set_verbosity_error()


def tiny_module(kind: str) -> Any:
    """A randomly initialised tiny model: ``bert`` (base), ``bert-cls``, ``bert-mlm``, ``gpt2``, ``t5``."""
    _quiet()
    torch.manual_seed(0)
    if kind.startswith("bert"):
        cfg = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64, num_labels=3,
        )
        cls = {"bert": transformers.BertModel, "bert-cls": transformers.BertForSequenceClassification,
               "bert-mlm": transformers.BertForMaskedLM}[kind]
        return cls(cfg).eval()
    if kind == "gpt2":
        cfg2 = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=48)
        return transformers.GPT2LMHeadModel(cfg2).eval()
    if kind == "t5":
        cfg3 = transformers.T5Config(
            vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
        return transformers.T5ForConditionalGeneration(cfg3).eval()
    raise ValueError(kind)


_TASKS: dict[str, Task] = {"bert": "encoder", "bert-cls": "encoder", "bert-mlm": "encoder",
                           "gpt2": "generator", "t5": "seq2seq"}


def tiny_loaded(kind: str, *, model_id: str | None = None, max_batch: int = 4, max_seq_len: int = 16,
                new_tokens: int = 3, module: Any = None) -> LoadedModel:
    """A LoadedModel around :func:`tiny_module` with the hash tokenizer."""
    task = _TASKS[kind]
    return LoadedModel(
        model_id=model_id or f"tiny-{kind}",
        task=task,
        module=module if module is not None else tiny_module(kind),
        tokenizer=HashTokenizer(VOCAB, reserved=5),
        weights="random (catalog architecture)",
        dtype="float32",
        vocab_size=VOCAB,
        limits=ModelLimits(max_batch=max_batch, max_seq_len=max_seq_len,
                           new_tokens=new_tokens if task != "encoder" else 0),
        parameters=1,
        load_secs=0.0,
    )


def word_tokenizer() -> HfTokenizer:
    """A real (transformers) word-level tokenizer over :data:`VOCAB` ids: ``[PAD]`` 0, ``[UNK]`` 1, then
    ``w2`` … ``w100`` — so generators' ids decode to text."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")
    return HfTokenizer(fast, "test words")


def tiny_loader(kinds: dict[str, str], calls: list[str] | None = None, *, words: bool = False) -> Any:
    """A ``loader`` for AgentRuntime: model id -> tiny kind; records the ids it was asked for. ``words``: the
    models get :func:`word_tokenizer` instead of the hash fallback."""

    def load(model_id: str, spec: ModelSpec, *, device: str, dtype: str | None, clock: Any) -> LoadedModel:
        if calls is not None:
            calls.append(model_id)
        loaded = tiny_loaded(kinds[model_id], model_id=model_id, max_batch=spec.batch_size,
                             max_seq_len=spec.max_seq_len, new_tokens=spec.new_tokens)
        if words:
            loaded.tokenizer = word_tokenizer()
        return loaded

    return load


class OomModule(torch.nn.Module):
    """Raises CUDA's out-of-memory error on every forward (an agent past its MPS limit)."""

    def forward(self, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class BrokenModule(torch.nn.Module):
    """Raises a plain error that is not an OOM."""

    def forward(self, **kwargs: Any) -> Any:
        raise RuntimeError("shape mismatch in layer 3")


class RaisingModule(torch.nn.Module):
    """Raises ``RuntimeError(message)`` on every forward (a cuBLAS allocation failure, a lost context...)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def forward(self, **kwargs: Any) -> Any:
        raise RuntimeError(self.message)
