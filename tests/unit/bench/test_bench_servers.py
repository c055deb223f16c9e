"""``colo bench servers`` against fake llama-servers: clients spread over servers, setups merged into one
report, server-reported timings, ``ignore_eos``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.bench.loads.http import parse_completion, request_body
from colo.bench.report import load_json
from colo.bench.servers import client_specs, table_rows
from colo.cli.main import app
from testkit import FAKE_LLAMA_SERVER as FAKE_SERVER
from testkit import free_port

# Recorded from llama-server (llama.cpp b6xxx, Llama-3.1-8B Q4_K_M): a non-streaming chat completion.
RECORDED = {
    "choices": [{"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": "GPUs are"}}],
    "created": 1764400000,
    "model": "gpt-3.5-turbo",
    "system_fingerprint": "b6500-abc",
    "object": "chat.completion",
    "usage": {"completion_tokens": 128, "prompt_tokens": 17, "total_tokens": 145},
    "id": "chatcmpl-x",
    "timings": {
        "prompt_n": 17,
        "prompt_ms": 9.1,
        "predicted_n": 128,
        "predicted_ms": 800.0,
        "predicted_per_second": 160.0,
    },
}


def test_llama_server_timings_are_the_server_side_seconds() -> None:
    done = parse_completion("openai-chat", RECORDED)
    assert done.completion_tokens == 128 and done.prompt_tokens == 17
    assert done.eval_secs == pytest.approx(0.8)
    assert parse_completion("openai-chat", {"usage": {"completion_tokens": 3}}).eval_secs is None


def test_ignore_eos_only_for_the_openai_api() -> None:
    assert request_body("openai-chat", "m", "p", 64, ignore_eos=True)["ignore_eos"] is True
    assert "ignore_eos" not in request_body("openai-chat", "m", "p", 64)
    with pytest.raises(ValueError, match="llama-server extension"):
        request_body("ollama-chat", "m", "p", 64, ignore_eos=True)


def test_client_i_talks_to_server_i_mod_count() -> None:
    specs = client_specs(["http://a:1", "http://b:2"], 3, {"api": "openai-chat"}, 1.0)
    assert [s.params["url"] for s in specs] == ["http://a:1", "http://b:2", "http://a:1"]
    assert [s.label for s in specs] == ["c0@a:1", "c1@b:2", "c2@a:1"]


@pytest.fixture
def servers() -> Iterator[list[str]]:
    """Two one-slot fake servers and one with two slots (-np 2)."""
    procs, urls = [], []
    for np_ in (1, 1, 2):
        port = free_port()
        argv = [
            sys.executable,
            str(FAKE_SERVER),
            "--port",
            str(port),
            "-np",
            str(np_),
            "--load-secs",
            "0",
            "--secs-per-token",
            "0.002",
        ]
        procs.append(subprocess.Popen(argv))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    yield urls
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_setups_measured_and_merged_into_one_table(servers: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    common = [
        "--ignore-eos",
        "--max-tokens",
        "16",
        "-n",
        "1,2",
        "--duration",
        "0.5",
        "--out",
        str(out),
        "--title",
        "fake",
    ]
    cli = CliRunner()
    r1 = cli.invoke(
        app, ["bench", "servers", "--url", servers[0], "--url", servers[1], "--setup", "timeslice", *common]
    )
    assert r1.exit_code == 0, r1.output
    r2 = cli.invoke(app, ["bench", "servers", "--url", servers[2], "--setup", "batching", "--append", *common])
    assert r2.exit_code == 0, r2.output
    [result] = load_json((out / "bench.json").read_text())
    assert result.modes() == ["timeslice", "batching"]
    assert set(result.settings["setups"]) == {"timeslice", "batching"}
    rows = {(r["setup"], r["streams"]): r for r in table_rows(result)}
    assert set(rows) == {("timeslice", 1), ("timeslice", 2), ("batching", 1), ("batching", 2)}
    two = rows[("timeslice", 2)]
    # two separate servers: close to twice one server's rate (the fake sleeps per token)
    assert two["scaling_efficiency"] is not None and two["scaling_efficiency"] > 0.6
    assert two["server_aggregate_tok_per_sec"] > 0 and two["requests"] > 0
    # every request generated exactly max_tokens (ignore_eos)
    point = result.point("batching", 2)
    assert point is not None
    for inst in point.instances:
        assert inst.items == 16 * inst.requests or inst.requests == 0
    assert "one server, N slots" in (out / "servers.md").read_text()
    bad = cli.invoke(app, ["bench", "servers", "--url", servers[0], "--setup", "nope", *common])
    assert bad.exit_code == 2
    eos = cli.invoke(app, ["bench", "servers", "--url", servers[0], "--setup", "mps", "--api", "ollama-chat", *common])
    assert eos.exit_code == 2 and "openai-chat" in eos.output
    assert json.loads((out / "bench.json").read_text())
