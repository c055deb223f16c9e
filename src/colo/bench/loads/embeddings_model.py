"""The model the embeddings comparison runs on: sentence-transformers/all-MiniLM-L6-v2's architecture with
random weights and a local WordPiece tokenizer, written to a folder any server can load offline.

BertModel, 6 layers, hidden 384, 12 heads, intermediate 1536, 512 positions, vocabulary 30522 (all-MiniLM-L6-v2's
shape); weights random (seeded), saved as safetensors. The vocabulary is BERT's layout — ``[PAD]`` 0,
``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103 — with every word of
:data:`colo.bench.loads.embeddings.WORDS` whole (so a bench text of n words is n + 2 tokens), the rest filler.
sentence-transformers' files (``modules.json``, mean pooling in ``1_Pooling/``) make it load as a
SentenceTransformer, as infinity-emb does; colo's agent loads it as a local path.

``python -m colo.bench.loads.embeddings_model FOLDER [--tiny]`` writes it (``--tiny``: 1 layer, hidden 32,
vocabulary 512, for CPU tests). Needs torch and transformers; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo.bench.loads.embeddings import WORDS
from colo.files import write_atomic

SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}


@dataclass(frozen=True)
class BertShape:
    """A BertModel's size."""

    layers: int = 6
    hidden: int = 384
    heads: int = 12
    intermediate: int = 1536
    vocab_size: int = 30522
    max_positions: int = 512


MINILM_L6 = BertShape()
TINY = BertShape(layers=1, hidden=32, heads=2, intermediate=64, vocab_size=512, max_positions=512)


def vocabulary(size: int) -> list[str]:
    """``size`` WordPiece tokens: BERT's special tokens at their ids, :data:`WORDS` whole, filler after.
    Raises ValueError when ``size`` cannot hold them."""
    if size < 104 + len(WORDS):
        raise ValueError(f"a vocabulary of {size} cannot hold the special tokens and {len(WORDS)} words")
    tokens = [SPECIALS.get(i, f"[unused{i}]") for i in range(104)]
    tokens += list(WORDS)
    tokens += [f"filler{i}" for i in range(size - len(tokens))]
    return tokens


def wordpiece_tokenizer(tokens: Sequence[str], max_length: int) -> Any:
    """BERT's uncased WordPiece tokenizer over ``tokens`` (``[CLS] text [SEP]``), built with the tokenizers
    library so that transformers 4 and 5 save and read it alike (their BertTokenizer constructors differ)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(tokens)}
    core = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers 5 (an alias of TokenizersBackend)
    return fast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def write_model(folder: Path, shape: BertShape = MINILM_L6, *, seed: int = 0) -> Path:
    """Write the random-weight model, its tokenizer and sentence-transformers' files to ``folder``."""
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        architectures=["BertModel"],
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokens = vocabulary(shape.vocab_size)
    write_atomic(folder / "vocab.txt", "\n".join(tokens) + "\n")
    wordpiece_tokenizer(tokens, shape.max_positions).save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    write_atomic(folder / "modules.json", json.dumps(modules, indent=2))
    write_atomic(
        folder / "sentence_bert_config.json", json.dumps({"max_seq_length": 256, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": shape.hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    write_atomic(folder / "1_Pooling" / "config.json", json.dumps(pooling, indent=2))
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colo.bench.loads.embeddings_model", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tiny", action="store_true", help="1 layer, hidden 32, vocabulary 512 (CPU tests)")
    args = parser.parse_args(argv)
    write_model(args.folder, TINY if args.tiny else MINILM_L6)
    print(f"wrote {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
