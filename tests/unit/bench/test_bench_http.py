"""HTTP clients against a small local server speaking Ollama's and OpenAI's documented response formats."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from colo.bench.harness import BenchError, run_point
from colo.bench.loads.http import HttpClient, HttpWorkload, parse_completion, request_body
from colo.bench.report import to_markdown
from colo.bench.results import BenchResult
from colo.bench.spec import InstanceSpec
from fakes.fake_llama_server import JsonHandler


class _Handler(JsonHandler):
    seen: list[tuple[str, dict[str, Any]]] = []  # noqa: RUF012 - shared by the test server's threads

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        if body.get("model") == "broken":
            self._reply(500, {"error": "model exploded"})
            return
        if self.path == "/api/chat":
            n = body["options"]["num_predict"]
            self._reply(
                200,
                {
                    "model": body["model"],
                    "created_at": "2026-11-21T18:00:00Z",
                    "message": {"role": "assistant", "content": "word " * n},
                    "done": True,
                    "total_duration": 60_000_000,
                    "load_duration": 1_000_000,
                    "prompt_eval_count": 12,
                    "prompt_eval_duration": 5_000_000,
                    "eval_count": n,
                    "eval_duration": 50_000_000,
                },
            )
        elif self.path == "/api/generate":
            n = body["options"]["num_predict"]
            self._reply(
                200,
                {
                    "model": body["model"],
                    "response": "x" * n,
                    "done": True,
                    "prompt_eval_count": 7,
                    "eval_count": n,
                    "eval_duration": 25_000_000,
                },
            )
        elif self.path == "/v1/chat/completions":
            n = body["max_tokens"]
            self._reply(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "y"}, "finish_reason": "length"}
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n},
                },
            )
        else:
            self._reply(404, {"error": "not found"})


@pytest.fixture()
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("api", "tokens", "eval_secs", "path"),
    [
        ("ollama-chat", 16, 0.05, "/api/chat"),
        ("ollama-generate", 16, 0.025, "/api/generate"),
        ("openai-chat", 16, None, "/v1/chat/completions"),
    ],
)
def test_clients_read_the_servers_token_counts(
    server: str, api: str, tokens: int, eval_secs: float | None, path: str
) -> None:
    client = HttpClient(server, api=api, model="llama3.1:8b", max_tokens=tokens)
    done = client.complete()
    client.close()
    assert done.completion_tokens == tokens
    assert done.eval_secs == (pytest.approx(eval_secs) if eval_secs else None)
    sent_path, body = _Handler.seen[-1]
    assert sent_path == path and body["stream"] is False and body["model"] == "llama3.1:8b"


def test_server_errors_and_bad_bodies_are_reported(server: str) -> None:
    with pytest.raises(RuntimeError, match="answered 500"):
        HttpClient(server, model="broken").complete()
    with pytest.raises(RuntimeError, match="failed"):
        HttpClient("http://127.0.0.1:9", timeout_secs=2).complete()
    with pytest.raises(ValueError, match="eval_count"):
        parse_completion("ollama-chat", {"message": {}})
    with pytest.raises(ValueError, match="usage.completion_tokens"):
        parse_completion("openai-chat", {"choices": []})
    with pytest.raises(ValueError, match="unknown api"):
        request_body("grpc", "m", "p", 1)


def test_workload_counts_tokens_and_server_time(server: str) -> None:
    w = HttpWorkload(server, api="ollama-chat", max_tokens=8)
    assert w.prepare()["endpoint"].endswith("/api/chat")
    out = w.request()
    assert out.items == 8.0 and out.extra == {"eval_secs": pytest.approx(0.05)}
    w.close()


def test_concurrent_clients_through_the_harness(server: str) -> None:
    spec = InstanceSpec("http", {"url": server, "api": "openai-chat", "max_tokens": 4}, duration_secs=0.3)
    point = run_point([spec, spec], mode="external")
    assert point.concurrency == 2
    for inst in point.instances:
        assert inst.requests >= 1 and inst.items == 4 * inst.requests and inst.unit == "tok"
    ollama = InstanceSpec("http", {"url": server, "api": "ollama-generate", "max_tokens": 5}, duration_secs=0.2)
    ollama_point = run_point([ollama], mode="external")
    inst = ollama_point.instances[0]
    # Ollama's own rate: eval_count / eval_duration = 5 / 0.025 s
    assert inst.server_per_sec == pytest.approx(200.0)
    md = to_markdown([BenchResult("ollama", "http", (ollama_point,))])
    assert "as served N=1: the server's own rate (tokens over the server-reported generation time: Ollama eval_duration, llama-server timings.predicted_ms) 200.0 tok/s" in md
    with pytest.raises(BenchError, match="answered 500"):
        run_point([InstanceSpec("http", {"url": server, "model": "broken"}, duration_secs=0.2)], mode="external")
