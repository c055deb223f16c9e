"""scripts/lone_latency.py (issue 22): lone requests timed against a real agent, its phases read from /metrics."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo.modelserver.bodies import EmbeddingsBody, InferBody
from colo.modelserver.metrics import PHASES
from colo.spec import load_config
from colo.spec.config import ModelSpec
from scriptkit import load_script, served_agent

lone = load_script("lone_latency")


def test_the_config_and_bodies_are_what_the_agent_takes(tmp_path: Path) -> None:
    path = tmp_path / "colo.yaml"
    path.write_text(lone.config_text(lone.BERT_TINY, 9555))
    config = load_config(path)
    assert config.agents[lone.AGENT].port == 9555 and config.agents[lone.AGENT].models == [lone.BERT_TINY]
    bodies = lone.request_bodies(lone.BERT_TINY, 16)
    infer = InferBody.model_validate_json(bodies["/infer"])
    assert infer.input_ids is not None and [len(r) for r in infer.input_ids] == [16]
    embeddings = EmbeddingsBody.model_validate_json(bodies["/v1/embeddings"])
    assert isinstance(embeddings.input, list) and len(embeddings.input) == 16


@pytest.fixture(scope="module")
def agent_url() -> Iterator[str]:
    with served_agent("lone", lone.BERT_TINY, ModelSpec(batch_size=4, max_seq_len=32)) as url:
        yield url


def test_measure_times_each_route_and_reads_the_agents_phases(agent_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert lone.main(["--url", agent_url, "--warmup", "2", "--requests", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["tokens"] == 16
    assert set(result["routes"]) == {"/infer", "/v1/embeddings"}
    for row in result["routes"].values():
        assert row["requests"] == 5 and 0 < row["p50_ms"] <= row["p99_ms"]
        # The phases of the route's own timed requests, every one observed.
        assert set(row["phases_ms"]) == set(PHASES) and row["phases_ms"]["forward"] > 0
    infer = result["routes"]["/infer"]
    assert 0 < infer["outside_forward_p50_ms"] < infer["p50_ms"] and "outside_forward_p50_ms" not in result["routes"]["/v1/embeddings"]
    assert result["cuda_graphs"]["enabled"] is False  # what /health said after the timed requests
    assert lone.main(["--url", agent_url, "--warmup", "0", "--requests", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("a lone request of 1 × 16 ids, on cpu") and lines[4].startswith("| `/infer` | 3 |")
    assert lines[-1] == "CUDA graphs: off (not on CUDA (cpu))"


def test_both_measures_an_agent_with_graphs_off_then_one_with_them_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str | None] = []

    def run_once(args: object, cuda_graphs: str | None) -> dict[str, object]:
        asked.append(cuda_graphs)
        return {"switch": cuda_graphs}

    monkeypatch.setattr(lone, "run_once", run_once)
    assert lone.main(["--cuda-graphs", "both", "--json"]) == 0
    assert asked == ["off", "on"]
    assert json.loads(capsys.readouterr().out) == {"runs": {"off": {"switch": "off"}, "on": {"switch": "on"}}}
    assert lone.main(["--cuda-graphs", "off", "--json"]) == 0 and asked[-1] == "off"
    with pytest.raises(SystemExit):
        lone.main(["--url", "http://127.0.0.1:1", "--cuda-graphs", "on"])


def test_the_graphs_line_says_what_the_agent_holds() -> None:
    graphs = {
        "enabled": True, "graphs": 2, "pool_bytes": 3 << 20, "budget_bytes": 64 << 20, "replays": 10, "failures": 0,
        "full": None, "models": {"m": {"shapes": ["1x16", "8x128"], "pool_bytes": 3 << 20, "off_reason": None}},
    }
    assert lone.graphs_line(graphs) == (
        "CUDA graphs: 2 held {'m': ['1x16', '8x128']}, pools 3.0 of 64.0 MiB, 10 replays, 0 failures"
    )
    assert lone.graphs_line({**graphs, "full": "budget reached"}).endswith("; no new shapes: budget reached")
    assert lone.graphs_line(None) == "CUDA graphs: not reported by the agent"


def test_a_kept_alive_connection_closed_by_the_server_is_opened_again(agent_url: str) -> None:
    conn = lone.Connection(agent_url)
    assert conn.request("GET", "/health")[0] == 200
    assert conn._conn is not None and conn._conn.sock is not None
    conn._conn.sock.shutdown(socket.SHUT_RDWR)  # as the server's keep-alive timeout would
    assert conn.request("GET", "/health")[0] == 200
    conn.close()


def test_an_agent_that_never_answers_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RuntimeError, match="did not answer 200"):
        lone.wait_healthy(f"http://127.0.0.1:{port}", None, None, timeout=0.3)
