"""``colo bench embeddings`` (colo.cli.bench_embeddings_cmd) through typer's CliRunner: every option reaches the
load's command line, a run against a live /v1/embeddings server prints a JSON line per point and the table
(exit 0), a server answering errors exits 1, a bad list exits 2 with the option named."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from colo.bench.loads import embeddings
from colo.cli.bench_embeddings_cmd import bench_embeddings
from colo.cli.main import app

runner = CliRunner()


class _Server(http.server.ThreadingHTTPServer):
    status = 200
    seen: list[dict[str, object]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(body)
        answer = json.dumps({"data": [{"embedding": [0.0]}]} if self.server.status == 200 else {"error": "no"})
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_a_run_prints_one_json_line_per_point_then_the_table(server: _Server) -> None:
    r = runner.invoke(app, ["bench", "embeddings", "--url", _url(server), "--label", "ours", "-m", "minilm",
                            "--clients", "1,2", "--tokens", "16", "--texts", "2", "--window", "0.2", "--warmup", "0"])
    assert r.exit_code == 0, r.output
    points = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(p["server"], p["clients"], p["tokens"]) for p in points] == [("ours", 1, 16), ("ours", 2, 16)]
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in points)
    assert "req/s" in r.stdout and "| ours" in r.stdout  # the Markdown table follows
    assert server.seen and all(b["model"] == "minilm" and len(b["input"]) == 2 for b in server.seen)  # type: ignore[arg-type]


def test_a_server_that_answers_errors_exits_1(server: _Server) -> None:
    server.status = 500
    r = runner.invoke(app, ["bench", "embeddings", "--url", _url(server), "-m", "m", "--clients", "1",
                            "--tokens", "16", "--window", "0.2", "--warmup", "0"])
    assert r.exit_code == 1
    (point,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert point["errors"] > 0 and "500" in point["last_error"]


def test_a_bad_list_is_a_usage_error_naming_the_option() -> None:
    r = runner.invoke(app, ["bench", "embeddings", "--url", "http://127.0.0.1:9", "-m", "m", "--clients", "0,4"])
    assert r.exit_code == 2 and "--clients" in r.stderr


def test_every_option_reaches_the_loads_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[list[str]] = []
    monkeypatch.setattr(embeddings, "main", lambda argv: got.append(list(argv)) or 7)
    cli = typer.Typer()
    cli.command()(bench_embeddings)
    r = runner.invoke(cli, ["--url", "http://a", "--url", "http://b", "--label", "A", "--label", "B", "-m", "e5",
                            "--clients", "3", "--tokens", "32", "--texts", "4", "--window", "1.5", "--warmup", "0.5",
                            "--encoding-format", "base64", "--health-timeout", "9"])
    assert r.exit_code == 7  # the load's exit code is the command's
    assert got == [[
        "--model", "e5", "--clients", "3", "--tokens", "32", "--texts", "4", "--window", "1.5", "--warmup", "0.5",
        "--encoding-format", "base64", "--health-timeout", "9.0", "--table",
        "--url", "http://a", "--url", "http://b", "--label", "A", "--label", "B",
    ]]
    defaults = runner.invoke(cli, ["--url", "http://a", "-m", "e5"])
    assert defaults.exit_code == 7 and got[1][:4] == ["--model", "e5", "--clients", "1,4,16"]
    assert "--label" not in got[1]
