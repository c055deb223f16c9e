"""colo top's frame over a GPU document with a daemon and clients (formatting only)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from api_fakes import TOKEN, gpu_source
from fastapi.testclient import TestClient
from rich.console import Console

from colo.api.app import create_app
from colo.cli.views.top import bar, render_frame


def _text(renderable: object) -> str:
    console = Console(width=220, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_frame_shows_gpu_daemon_and_agents() -> None:
    root = Path(tempfile.mkdtemp(prefix="colo-top-", dir="/tmp"))
    try:
        source, _ = gpu_source(root)
        client = TestClient(create_app(source, token=TOKEN))
        info, agents = client.get("/gpu/info").json(), client.get("/agents").json()["agents"]
        out = _text(render_frame(info, agents, url="http://127.0.0.1:8014"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert "MPS on (1 daemon(s))" in out
    assert "NVIDIA H100 80GB HBM3" in out
    assert "ACTIVE · 2 clients" in out
    assert "3.0 GiB / 80.0 GiB" in out  # GPU memory bar
    assert "35°C" in out and "70 W" in out
    critic = next(a for a in agents if a["name"] == "critic")
    assert critic["state"] == "RUNNING"
    assert "/ 4.0 GiB" in out  # critic's limit as the bar's total
    for a in agents:
        assert a["name"] in out


def test_bar_colours_by_fraction() -> None:
    assert bar(None, None).plain == "—"
    assert bar(512, 1024, width=10).plain.startswith("█████░░░░░")
    assert bar(None, 1024, width=4).plain.startswith("░░░░ ?")
    assert "bold red" in str(bar(95, 100, width=10).spans[0].style)
    assert str(bar(10, 100, width=10).spans[0].style) == "green"
