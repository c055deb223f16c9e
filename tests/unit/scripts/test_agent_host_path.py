"""scripts/agent_host_path.py (issue 22): /v1/embeddings under concurrent load, the agent's phases and batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from colo.modelserver.bodies import EmbeddingsBody
from colo.modelserver.metrics import PHASES
from colo.spec import load_config
from colo.spec.config import ModelSpec
from scriptkit import load_script, served_agent

host = load_script("agent_host_path")
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"


def test_the_config_and_request_are_what_the_agent_takes(tmp_path: Path) -> None:
    path = tmp_path / "colo.yaml"
    path.write_text(host.config_text(tmp_path / "model", 9556))
    config = load_config(path)
    assert config.agents[host.AGENT].port == 9556 and config.agents[host.AGENT].models == [host.MODEL]
    assert config.models[host.MODEL].batch_size == 64 and config.models[host.MODEL].max_seq_len == 256
    request = host.request_bytes("127.0.0.1", 9556, "/v1/embeddings", "m", 8, 128)
    head, body = request.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/embeddings HTTP/1.1\r\n") and f"Content-Length: {len(body)}".encode() in head
    parsed = EmbeddingsBody.model_validate_json(body)
    assert isinstance(parsed.input, list) and len(parsed.input) == 8 and parsed.encoding_format == "float"


def test_the_first_token_forward_runs_the_model_on_one_token_and_answers_every_position() -> None:
    seen: list[tuple[int, ...]] = []

    class Module:
        def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            seen.append(tuple(input_ids.shape))
            return type("Out", (), {"last_hidden_state": torch.ones(input_ids.shape[0], 1, 4)})()

    out = host.FirstTokenForward(Module())(input_ids=torch.ones(3, 7, dtype=torch.long), attention_mask=torch.ones(3, 7))
    assert seen == [(3, 1)] and tuple(out["last_hidden_state"].shape) == (3, 7, 4)


@pytest.fixture(scope="module")
def agent_url() -> Iterator[str]:
    with served_agent("host", BERT_TINY, ModelSpec(batch_size=8, max_seq_len=32)) as url:
        yield url


def test_measure_drives_the_route_and_reads_the_window(agent_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--url", agent_url, "--model", BERT_TINY, "--clients", "3", "--texts", "2", "--tokens", "16",
            "--warmup", "0.2", "--window", "0.6"]
    assert host.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["errors"] == {} and result["requests"] > 0
    assert result["seq_per_sec"] == pytest.approx(result["requests_per_sec"] * 2)
    assert set(result["phases_ms"]) == set(PHASES) and 1 <= result["batch_requests"] <= 3
    assert 0 < result["p50_ms"] <= result["p99_ms"] and "loop_cpu_share" not in result  # no pid: no CPU split
    assert host.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("/v1/embeddings, 3 clients × 2 texts of 16 tokens") and lines[-1].startswith("agent's")
