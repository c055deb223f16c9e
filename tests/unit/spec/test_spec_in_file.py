"""colo.spec.load.in_file: an error a plan or the API raised about a configuration, told about its file."""

from __future__ import annotations

from pathlib import Path

from colo.errors import ConfigError
from colo.spec.load import dotted, in_file, undotted


def test_undotted_inverts_dotted() -> None:
    for path in [("agents", "critic", "models", 0), ("policy", "margin"), ("gpus", 1, "memory"), ("version",)]:
        assert undotted(dotted(path)) == path


def test_an_error_from_the_request_body_names_the_file_and_the_fields_line(tmp_path: Path) -> None:
    f = tmp_path / "colo.yaml"
    f.write_text("version: 1\nagents:\n  a:\n    models: [m]\n    gpu: 5\n")
    err = ConfigError("gpu pin 5 matches no GPU", source="<request body>", field="agents.a.gpu", line=40, hint="h")
    told = in_file(err, f)
    assert str(told).startswith(f"{f}:5 agents.a.gpu: gpu pin 5 matches no GPU") and told.hint == "h"
    assert in_file(ConfigError("no source", field="agents.zz.gpu"), f).line == 2  # nearest line: agents
    other = ConfigError("x", source="/etc/other.yaml", field="agents.a.gpu", line=3)
    assert in_file(other, f) is other  # already about a file
    assert str(in_file(ConfigError("x", field="agents.a.gpu"), tmp_path / "gone.yaml")).startswith(
        f"{tmp_path / 'gone.yaml'} agents.a.gpu: x"
    )
