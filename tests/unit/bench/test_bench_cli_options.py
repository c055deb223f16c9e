"""cli/bench_cmd and its subcommand modules: the shared options are declared once (cli/bench_options) and each
subcommand gets the ones it offers; the group lists every subcommand, each from its family's module."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from colo.cli import bench_agents_cmd, bench_instances_cmd, bench_servers_cmd
from colo.cli.bench_cmd import bench_app
from colo.cli.bench_embeddings_cmd import bench_embeddings
from colo.cli.bench_options import AGENTS_SHARED, ALL_SHARED, BenchOptions
from colo.cli.bench_servers_cmd import HTTP_SHARED, HttpRequest
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


def test_the_group_lists_every_subcommand_from_its_module_in_order() -> None:
    commands = {c.name: c.callback for c in bench_app.registered_commands}
    assert list(commands) == [
        "encoder", "decode", "cmd", "http", "forwards", "agents", "make-gguf", "servers", "embeddings"
    ]
    assert commands["encoder"] is bench_instances_cmd.bench_encoder
    assert commands["forwards"] is bench_instances_cmd.bench_forwards
    assert commands["http"] is bench_servers_cmd.bench_http and commands["servers"] is bench_servers_cmd.bench_servers
    assert commands["agents"] is bench_agents_cmd.bench_agents and commands["embeddings"] is bench_embeddings
    agents = _help("agents")
    assert "--clients" in agents and "--concurrency" not in agents and "--thread-pct" not in agents
    assert set(AGENTS_SHARED) < set(ALL_SHARED)
