"""cli/bench_cmd: the shared options are declared once and each subcommand gets the ones it offers."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from colo.cli.bench_cmd import ALL_SHARED, HTTP_SHARED, BenchOptions, HttpRequest, bench_app
from colo.errors import UsageError

runner = CliRunner()


def _help(*args: str) -> str:
    result = runner.invoke(bench_app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_each_subcommand_offers_its_shared_options() -> None:
    encoder = _help("encoder")
    for flag in ("--mode", "--concurrency", "--thread-pct", "--mem-limit", "--bound", "--json"):
        assert flag in encoder
    http = _help("http")
    assert not re.search(r"--mode\s", http) and "--thread-pct" not in http and "--concurrency" in http
    assert "1,2,3" in http  # http's own default client counts
    assert "--bound" not in _help("cmd")
    assert set(HTTP_SHARED) < set(ALL_SHARED)


def test_defaults_and_http_request_checks() -> None:
    opts = BenchOptions()
    assert (opts.mode, opts.concurrency, opts.bound) == ("timeslice,mps", "1,2,4,8", False)
    req = HttpRequest("openai-chat", "m", "hi", 8)
    assert req.params() == {"api": "openai-chat", "model": "m", "prompt": "hi", "max_tokens": 8}
    with pytest.raises(UsageError, match="--api 'grpc'"):
        HttpRequest("grpc", "m", "hi", 8).params()
