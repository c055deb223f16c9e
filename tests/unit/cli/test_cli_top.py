"""colo top at 80×24: whole values, no ellipsis soup; q quits; a freshness clock; reconnecting after an outage."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from colo.cli.views.top import Column, Freshness, TopLoop, choose_columns, render_frame
from colo.clock import FakeClock
from colo.errors import OrchestratorUnreachable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_fakes import TOKEN, gpu_source

from colo.api.app import create_app


def _text(renderable: object, width: int, height: int = 24) -> str:
    console = Console(width=width, height=height, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def documents() -> tuple[dict, list]:  # type: ignore[type-arg]
    root = Path(tempfile.mkdtemp(prefix="colo-top-", dir="/tmp"))
    try:
        source, _ = gpu_source(root)
        client = TestClient(create_app(source, token=TOKEN))
        return client.get("/gpu/info").json(), client.get("/agents").json()["agents"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_80_columns_shows_whole_values(documents: tuple[dict, list]) -> None:  # type: ignore[type-arg]
    info, agents = documents
    agents = [*agents, {**agents[0], "name": "a-rather-long-agent-name", "state": "STOPPING", "gpu": "node-a:0",
                        "pid": 1234567}]
    out = _text(render_frame(info, agents, url="http://127.0.0.1:8014", width=80), width=80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out
    for a in agents:
        assert a["name"] in out and str(a["state"]).upper() in out
    assert "STOPPING" in out and "node-a:0" in out and "1234567" in out
    assert len([line for line in lines if line.strip()]) <= 24


def test_wide_terminal_shows_every_column(documents: tuple[dict, list]) -> None:  # type: ignore[type-arg]
    info, agents = documents
    out = _text(render_frame(info, agents, url="u", width=200), width=200)
    for header in ("peak", "restarts", "last error", "pipe dir", "power"):
        assert header in out


def test_choose_columns_drops_least_important_first() -> None:
    cols = [Column("a", 10, 0), Column("b", 10, 2), Column("c", 10, 1)]
    assert [c.header for c in choose_columns(cols, 30)] == ["a", "c"]
    assert [c.header for c in choose_columns(cols, None)] == ["a", "b", "c"]


def test_user_text_is_never_markup() -> None:
    agents = [{"name": "[red]x[/red] [/]", "state": "running", "last_error": "\x1b[2Jboom [/x]"}]
    out = _text(render_frame({}, agents, url="u", width=200), width=200)
    assert "[red]x[/red] [/]" in out and "\\e[2Jboom [/x]" in out and "\x1b" not in out


class Clock(FakeClock):
    """Wall time one second later at every reading."""

    def wall(self) -> float:
        self.advance(1)
        return super().wall()


def test_loop_keeps_data_while_disconnected_and_reconnects(documents: tuple[dict, list]) -> None:  # type: ignore[type-arg]
    info, agents = documents
    answers: list[object] = [(info, agents), OrchestratorUnreachable("no orchestrator running at 127.0.0.1:8014"),
                             OrchestratorUnreachable("still gone"), (info, agents)]
    keys = [None, None, None, "q"]
    frames: list[str] = []

    def poll():  # type: ignore[no-untyped-def]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    loop = TopLoop(poll, url="http://127.0.0.1:8014", interval_secs=1.0, wait_key=lambda s: keys.pop(0),
                   clock=Clock())
    loop.run(lambda f: frames.append(_text(f, 120)), lambda: 120)
    assert len(frames) == 4 and not keys  # q quit after the fourth frame
    assert "updated" in frames[0] and "disconnected" not in frames[0]
    assert "disconnected since" in frames[1] and "retrying" in frames[1]
    assert agents[0]["name"] in frames[1]  # the last data stays on screen
    assert "still gone" in frames[2]
    since1 = frames[1].split("disconnected since ")[1][:8]
    assert frames[2].split("disconnected since ")[1][:8] == since1  # since the first failure
    assert "disconnected" not in frames[3]


def test_freshness_clock_in_header() -> None:
    out = _text(render_frame({}, [], url="u", fresh=Freshness(last_ok=0.0)), 120)
    assert "updated" in out and "q quits" in out
