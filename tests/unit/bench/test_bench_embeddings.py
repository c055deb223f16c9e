"""The /v1/embeddings load and the comparison's model folder, on the CPU: bodies any OpenAI server takes, points
and errors counted through drive(), the table, the command line, and a MiniLM-shaped folder colo's agent loads
with its real tokenizer (one token per bench word)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from colo.bench.loads import embeddings
from colo.bench.loads.embeddings import WORDS, EmbeddingsShape, EmbeddingsTarget, measure, table_from_dicts, text_of


def test_bodies_and_urls() -> None:
    body = json.loads(EmbeddingsShape(model="minilm", rows=3, seq_len=16, encoding_format="base64").body())
    assert body["model"] == "minilm" and body["encoding_format"] == "base64"
    assert len(body["input"]) == 3 and len(set(body["input"])) == 3  # every text differs
    assert all(len(t.split()) == 14 for t in body["input"])  # 16 tokens: 14 words, [CLS], [SEP]
    assert len(set(text_of(70, seed=1).split())) == len(WORDS)  # no short cycle
    assert EmbeddingsTarget("a", "http://h:1", ()).infer_url == "http://h:1/v1/embeddings"
    assert EmbeddingsTarget("a", "http://h:1/v1/", ()).infer_url == "http://h:1/v1/embeddings"


def test_points_count_requests_and_errors() -> None:
    seen: list[dict[str, object]] = []
    state = {"n": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        seen.append(json.loads(request.content))
        state["n"] += 1
        if state["n"] % 5 == 0:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        return httpx.Response(200, json={"data": []})

    (point,) = measure(
        "fake", "http://fake", "minilm", clients=[2], tokens=[16], texts=2, window_secs=0.3, warmup_secs=0.0,
        transport=httpx.MockTransport(answer),
    )
    d = point.to_dict()
    assert d["requests"] > 0 and d["errors"] > 0 and d["seq_per_sec"] == pytest.approx(2 * d["req_per_sec"], rel=1e-3)
    assert "500" in d["last_error"] and d["p50_ms"] is not None
    assert all(len(b["input"]) == 2 for b in seen)  # type: ignore[arg-type]
    lines = table_from_dicts([d, {**d, "server": "other", "clients": 4}])
    assert lines[0].count("req/s") == 2 and len(lines) == 4
    assert "—" in lines[3]  # "fake" has no 4-client point


def test_command_line_refuses_bad_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert embeddings.main(["--url", "http://x", "--model", "m", "--clients", "0,4"]) == 2
    assert "--clients" in capsys.readouterr().err
    assert embeddings.main(["--url", "http://x", "--label", "a", "--label", "b", "--model", "m"]) == 2


def test_model_folder_loads_in_colo_with_its_tokenizer(tmp_path: Path) -> None:
    from colo.bench.loads.embeddings_model import TINY, vocabulary, write_model
    from colo.modelserver.loading import load_model
    from colo.spec.config import ModelSpec

    vocab = vocabulary(TINY.vocab_size)
    assert vocab[0] == "[PAD]" and vocab[101] == "[CLS]" and len(set(vocab)) == len(vocab)
    with pytest.raises(ValueError):
        vocabulary(100)
    folder = write_model(tmp_path / "m", TINY)
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    loaded = load_model("minilm", ModelSpec(path=str(folder), max_seq_len=256), device="cpu")
    assert loaded.weights.startswith("local weights at") and "local path" in loaded.tokenizer.description
    (ids,) = loaded.tokenizer.encode([text_of(14, seed=0)], 256).ids
    assert len(ids) == 16 and ids[0] == 101 and ids[-1] == 102 and 100 not in ids  # no [UNK]
