"""The argv the supervisor runs for an agent with no ``command`` (the built-in agent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from colo.modelserver.command import builtin_agent_command, health_url
from colo.modelserver.serve import parse_args


def test_argv_uses_this_interpreter_and_an_absolute_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = builtin_agent_command("critic", "colo.yaml", 9104)
    assert argv[:3] == [sys.executable, "-m", "colo.modelserver.serve"]
    assert argv[argv.index("--config") + 1] == str(tmp_path / "colo.yaml")
    assert argv[argv.index("--agent") + 1] == "critic"
    assert argv[argv.index("--port") + 1] == "9104"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--worst-case" not in argv and "--device" not in argv


def test_options_reach_the_agent_parser(tmp_path: Path) -> None:
    argv = builtin_agent_command(
        "synthesizer", tmp_path / "c.yaml", 9109, worst_case=True, device="cuda:0", python="/opt/py",
        extra_args=["--dtype", "float16"],
    )
    assert argv[0] == "/opt/py"
    args = parse_args(argv[3:])
    assert (args.agent, args.config, args.port, args.device, args.worst_case, args.dtype) == (
        "synthesizer", os.path.abspath(tmp_path / "c.yaml"), 9109, "cuda:0", True, "float16",
    )


@pytest.mark.parametrize(("name", "port"), [("", 9000), ("a", 0), ("a", 70000)])
def test_bad_arguments(name: str, port: int) -> None:
    with pytest.raises(ValueError):
        builtin_agent_command(name, "c.yaml", port)


def test_health_url() -> None:
    assert health_url(9101) == "http://127.0.0.1:9101/health"
    assert health_url(80, "10.0.0.1") == "http://10.0.0.1:80/health"
