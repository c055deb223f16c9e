"""The architecture catalog and building models from it (meta device and tiny CPU runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colo.errors import ConfigError, ProfileError
from colo.memory import build, catalog
from colo.spec import load_config

NEWSROOM = Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.yaml"

# Parameter counts published for these checkpoints (millions), used to check the catalog shapes.
PUBLISHED_PARAMS_M = {
    "google/bert_uncased_L-2_H-128_A-2": 4.39,
    "bert-base-uncased": 109.48,
    "roberta-base": 124.65,
    "distilbert-base-uncased": 66.36,
    "sentence-transformers/all-MiniLM-L6-v2": 22.71,
    "sentence-transformers/all-mpnet-base-v2": 109.49,
    "distilgpt2": 81.91,
    "gpt2": 124.44,
    "meta-llama/Llama-3.1-8B": 8030.26,
    "mistralai/Mistral-7B-v0.1": 7241.73,
    "Qwen/Qwen2.5-7B": 7615.62,
}


def test_every_newsroom_model_is_in_the_catalog() -> None:
    cfg = load_config(NEWSROOM)
    assert len(cfg.models) == 11
    for mid, spec in cfg.models.items():
        ent = catalog.entry(mid)
        assert ent.config["model_type"]
        if spec.task is not None:
            assert ent.task == spec.task, mid


def test_tasks_and_heads() -> None:
    assert catalog.task_of("distilgpt2") == "generator"
    assert catalog.task_of("google/flan-t5-small") == "seq2seq"
    assert catalog.task_of("roberta-base") == "encoder"
    assert catalog.entry("unitary/toxic-bert").head == "sequence-classification"
    assert catalog.arch_config("unitary/toxic-bert")["num_labels"] == 6
    assert catalog.entry("sentence-transformers/all-mpnet-base-v2").head == "base"


def test_arch_config_is_a_copy() -> None:
    a = catalog.arch_config("roberta-base")
    a["hidden_size"] = 1
    assert catalog.arch_config("roberta-base")["hidden_size"] == 768


def test_aliases_resolve() -> None:
    assert catalog.canonical_id("FacebookAI/roberta-base") == "roberta-base"
    assert catalog.arch_config("meta-llama/Llama-3.1-8B-Instruct")["num_key_value_heads"] == 8
    assert "roberta-base" in catalog.known_models()
    assert "FacebookAI/roberta-base" not in catalog.known_models()


def test_unknown_model_names_itself() -> None:
    with pytest.raises(catalog.UnknownModelError) as info:
        catalog.arch_config("acme/no-such-model")
    assert "acme/no-such-model" in str(info.value)
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMS_M))
def test_meta_build_matches_published_parameter_counts(model_id: str) -> None:
    module = build.build(model_id, device="meta").module
    params = sum(p.numel() for p in module.parameters())
    assert params / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[model_id], rel=0.002)


def test_infer_task_from_a_config_on_disk() -> None:
    assert catalog.infer_task({"is_encoder_decoder": True}) == "seq2seq"
    assert catalog.infer_task({"architectures": ["LlamaForCausalLM"]}) == "generator"
    assert catalog.infer_task({"architectures": ["GPT2LMHeadModel"]}) == "generator"
    assert catalog.infer_task({"architectures": ["BertForSequenceClassification"]}) == "encoder"
    assert catalog.infer_head({"architectures": ["BertForSequenceClassification"]}, "encoder") == (
        "sequence-classification"
    )


def test_source_is_random_weights_without_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    src = build.resolve_source("roberta-base")
    assert src.weights == "random"
    assert src.description == build.RANDOM_WEIGHTS
    with pytest.raises(ProfileError):
        build.resolve_source("roberta-base", random_weights=False)


def test_local_path_without_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build.resolve_source("x", path=str(tmp_path))
    assert "config.json" in str(info.value)


def test_local_path_config_is_used(tmp_path: Path) -> None:
    cfg = catalog.arch_config("google/bert_uncased_L-2_H-128_A-2") | {"num_hidden_layers": 1}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    src = build.resolve_source("my-bert", path=str(tmp_path))
    assert src.weights == "random" and src.task == "encoder"
    assert src.config["num_hidden_layers"] == 1


def test_local_weights_are_loaded(tmp_path: Path) -> None:
    built = build.build("google/bert_uncased_L-2_H-128_A-2")
    built.module.save_pretrained(tmp_path)
    again = build.build("google/bert_uncased_L-2_H-128_A-2", path=str(tmp_path))
    assert again.source.weights == "local"
    a = next(iter(built.module.state_dict().values()))
    b = next(iter(again.module.state_dict().values()))
    assert (a == b).all()


def test_example_inputs_shapes() -> None:
    bert = build.example_inputs("unitary/toxic-bert", 3, 7)
    assert tuple(bert["input_ids"].shape) == (3, 7)
    assert "token_type_ids" in bert
    rob = build.example_inputs("roberta-base", 2, 5)
    assert "token_type_ids" not in rob
    assert int(rob["input_ids"].min()) > 2  # clear of pad/bos/eos


def test_check_shape_refuses_too_long() -> None:
    src = build.resolve_source("roberta-base", random_weights=True)
    build.check_shape(src, 512, 0)
    with pytest.raises(ConfigError) as info:
        build.check_shape(src, 513, 0)
    assert "512" in str(info.value)
    gpt = build.resolve_source("distilgpt2", random_weights=True)
    with pytest.raises(ConfigError):
        build.check_shape(gpt, 1000, 64)


@pytest.mark.parametrize(
    ("model_id", "seq", "new", "tokens"),
    [
        ("google/bert_uncased_L-2_H-128_A-2", 16, 0, 32),
        ("distilgpt2", 8, 3, 6),
        ("google/flan-t5-small", 8, 3, 6),
    ],
)
def test_run_worst_case_on_cpu(model_id: str, seq: int, new: int, tokens: int) -> None:
    built = build.build(model_id, random_weights=True)
    assert build.run_worst_case(built, 2, seq, new) == tokens
