"""``GET /events``: seq greater than ``since``, oldest first — ``limit`` the oldest, ``tail`` the newest — the
same answer from the real store as from the sources that hold events in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_fakes import FakeSource, newsroom_source
from fastapi.testclient import TestClient

from colo.api.app import create_app
from colo.api.context import ApiOptions
from colo.api.source import pick_events
from colo.supervise.snapshots import Event, EventKind
from colo.supervise.store import Store


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(newsroom_source(), token="t" * 32))  # five events, seq 1..5


def seqs(client: TestClient, **params: object) -> list[int]:
    r = client.get("/events", params=params)
    assert r.status_code == 200, r.text
    return [e["seq"] for e in r.json()["events"]]


def test_since_0_is_the_oldest_first(client: TestClient) -> None:
    assert seqs(client, since=0, limit=2) == [1, 2]
    assert seqs(client, since=5, limit=2) == []
    assert seqs(client, since=2, limit=2) == [3, 4]


def test_tail_is_the_newest_oldest_first(client: TestClient) -> None:
    assert seqs(client, tail=2) == [4, 5]
    assert seqs(client, since=4, tail=3) == [5]
    assert seqs(client, tail=2, limit=1) == [4, 5]  # limit does not apply with tail
    assert client.get("/events", params={"tail": 0}).status_code == 422


def test_follow_with_tail_starts_at_the_newest() -> None:
    source: FakeSource = newsroom_source()
    app = create_app(source, token="t" * 32, options=ApiOptions(event_poll_secs=0.0, stream_max_secs=0.05))
    r = TestClient(app).get("/events", params={"follow": 1, "tail": 2})
    frames = [f for f in r.text.split("\n\n") if f.startswith("id:")]
    assert [f.splitlines()[0] for f in frames] == ["id: 4", "id: 5"]
    assert json.loads(frames[-1].splitlines()[2].removeprefix("data: "))["seq"] == 5


@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize(("since", "limit"), [(0, 2), (0, 10), (2, 2), (3, 1), (5, 3), (0, 0)])
def test_store_and_in_memory_sources_agree(tmp_path: Path, since: int, limit: int, tail: bool) -> None:
    store = Store(tmp_path / "colo.db")
    try:
        held = [store.add_event(100.0 + i, EventKind.STARTED, "a", f"e{i}") for i in range(5)]
        want = [e.seq for e in pick_events(held, since, limit, tail=tail)]
        assert [e.seq for e in store.events(since, limit, tail=tail)] == want
    finally:
        store.close()
    expected = {(0, 2): [1, 2], (0, 10): [1, 2, 3, 4, 5], (2, 2): [3, 4], (3, 1): [4], (5, 3): [], (0, 0): []}
    tails = {(0, 2): [4, 5], (0, 10): [1, 2, 3, 4, 5], (2, 2): [4, 5], (3, 1): [5], (5, 3): [], (0, 0): []}
    assert want == (tails if tail else expected)[(since, limit)]


def test_pick_events_keeps_order_of_seq() -> None:
    events = [Event(i, float(i), EventKind.STARTED, None, f"e{i}") for i in (1, 2, 3)]
    assert [e.seq for e in pick_events(events, 0, 2, tail=True)] == [2, 3]
