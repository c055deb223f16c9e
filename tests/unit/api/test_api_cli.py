"""``colo serve`` and ``colo top`` through typer's CliRunner."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from api_fakes import NEWSROOM, TOKEN, FakeSource, newsroom_source
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from colo.api import client as client_module
from colo.api.app import create_app
from colo.cli.main import app

runner = CliRunner()


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> FakeSource:
    """Make ``ApiClient.from_state_dir`` talk to an in-process app over a fake orchestrator."""
    source = newsroom_source()
    test_client = TestClient(create_app(source, token=TOKEN))

    def from_state_dir(state_dir: Path, url: str | None = None, settings: object = None) -> client_module.ApiClient:
        return client_module.ApiClient(url or "http://testserver", TOKEN, client=test_client)

    monkeypatch.setattr(client_module.ApiClient, "from_state_dir", staticmethod(from_state_dir))
    return source


def test_top_once_prints_agents_and_limits(fake_api: FakeSource) -> None:
    result = runner.invoke(app, ["top", "--once"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for s in fake_api.snapshot().agents:
        assert s.name in result.output
    assert "RUNNING" in result.output
    assert "MPS off" in result.output
    assert "4.0 GiB" in result.output  # critic's limit


def test_top_json(fake_api: FakeSource) -> None:
    result = runner.invoke(app, ["top", "--once", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {a["name"] for a in data["agents"]} == {s.name for s in fake_api.snapshot().agents}
    assert data["gpu_info"]["mps_enabled"] is False


def test_top_without_orchestrator(unused_port: int, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["top", "--once", "--url", f"http://127.0.0.1:{unused_port}"], env={"COLO_STATE_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert f"no orchestrator running at 127.0.0.1:{unused_port}" in result.output


def test_serve_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "colo.yaml"
    bad.write_text("agents: [\n")
    result = runner.invoke(app, ["serve", str(bad), "--no-gpu"], env={"COLO_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "colo.yaml" in result.output


def test_serve_busy_port_exits_2(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = runner.invoke(
            app, ["serve", str(NEWSROOM), "--no-gpu", "--port", str(port)], env={"COLO_STATE_DIR": str(tmp_path)}
        )
    assert result.exit_code == 2
    assert "already in use" in result.output


def test_top_takes_address_from_config(tmp_path: Path, unused_port: int) -> None:
    cfg = tmp_path / "colo.yaml"
    text = NEWSROOM.read_text() + f"\napi:\n  port: {unused_port}\nstate_dir: {tmp_path / 'state'}\n"
    cfg.write_text(text)
    result = runner.invoke(app, ["top", "--once", "--config", str(cfg)])
    assert result.exit_code == 1
    assert f"no orchestrator running at 127.0.0.1:{unused_port}" in result.output
