"""ApiClient against the real app (through FastAPI's test client) and against a dead address."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from api_fakes import NEWSROOM, TOKEN, FakeSource, newsroom_source
from fastapi.testclient import TestClient

from colo.api.app import create_app
from colo.api.auth import token_path
from colo.api.client import ApiClient, ApiError, base_url
from colo.clock import FakeClock
from colo.errors import ConfigError, OrchestratorUnreachable, SupervisorError, UsageError
from colo.spec.config import ApiSettings


@pytest.fixture
def source() -> FakeSource:
    return newsroom_source()


def api(source: FakeSource, token: str | None = TOKEN) -> ApiClient:
    test_client = TestClient(create_app(source, token=TOKEN))
    return ApiClient("http://testserver", token, client=test_client)


def test_reads(source: FakeSource) -> None:
    client = api(source)
    assert client.healthz()["status"] == "ok"
    assert {a["name"] for a in client.agents()} == {s.name for s in source.snapshot().agents}
    assert client.agent("critic")["name"] == "critic"
    assert [e["seq"] for e in client.events(since=2, limit=2)] == [3, 4]
    assert "agent_allocations" in client.allocation()["mps_resource_allocation"]
    assert client.gpu_info()["mps_enabled"] is False
    assert "colo_plan_agents" in client.metrics_text()


def test_action_and_apply(source: FakeSource) -> None:
    client = api(source)
    assert client.action("critic", "restart")["action"] == "restart"
    assert source.calls == [("restart", "critic")]
    assert client.apply(NEWSROOM.read_text())["restarted"] == ["critic"]
    client.apply(NEWSROOM.read_text(), Path("/srv/näws room/colo.yaml"))
    assert source.applied_paths == [None, "/srv/näws room/colo.yaml"]  # what SIGHUP reloads afterwards
    with pytest.raises(UsageError):
        client.action("critic", "explode")  # type: ignore[arg-type]


def test_follow_events_reads_the_stream(source: FakeSource) -> None:
    from colo.api.context import ApiOptions

    class Ticks(FakeClock):
        """0, 1, 2, ... seconds: one more at every monotonic reading."""

        def __init__(self) -> None:
            super().__init__(start=-1.0)

        def monotonic(self) -> float:
            self.advance(1.0)
            return super().monotonic()

    app = create_app(source, token=TOKEN, clock=Ticks(), options=ApiOptions(event_poll_secs=0, stream_max_secs=2))
    client = ApiClient("http://testserver", TOKEN, client=TestClient(app))
    assert [e["seq"] for e in client.follow_events(since=3)] == [4, 5]


def test_errors_map_to_colo_errors(source: FakeSource) -> None:
    with pytest.raises(UsageError, match="token"):
        api(source, token="wrong").action("critic", "stop")
    with pytest.raises(UsageError, match="no agent named 'nobody'"):
        api(source).agent("nobody")
    source.action_error = SupervisorError("critic is FATAL")
    with pytest.raises(SupervisorError, match="FATAL"):
        api(source).action("critic", "start")
    with pytest.raises(ConfigError) as err:
        api(source).apply("models: {}\nagents:\n  a:\n    models: [m]\n    priority: urgent\n")
    assert err.value.field == "agents.a.priority" and err.value.line == 5
    assert err.value.source == "<request body>"


def test_other_statuses_become_api_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(500, json={"error": "boom"}))
    client = ApiClient("http://x", "t", client=httpx.Client(base_url="http://x", transport=transport))
    with pytest.raises(ApiError, match="500: boom") as err:
        client.agents()
    assert err.value.status == 500


def test_nothing_listening_is_a_clear_message() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.Client(base_url="http://127.0.0.1:8014", transport=httpx.MockTransport(refuse))
    client = ApiClient("http://127.0.0.1:8014", "t", client=http)
    with pytest.raises(OrchestratorUnreachable) as err:
        client.agents()
    assert err.value.message == "no orchestrator running at 127.0.0.1:8014"
    assert "colo up" in str(err.value)


def test_real_refused_connection(unused_port: int) -> None:
    with pytest.raises(OrchestratorUnreachable, match=f"no orchestrator running at 127.0.0.1:{unused_port}"):
        ApiClient(f"http://127.0.0.1:{unused_port}", None, timeout_secs=2).healthz()


def test_from_state_dir_reads_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLO_API_TOKEN", raising=False)
    token_path(tmp_path).write_text("file-token\n")
    client = ApiClient.from_state_dir(tmp_path, url="http://127.0.0.1:9999/")
    assert client.base_url == "http://127.0.0.1:9999"
    assert client._headers == {"Authorization": "Bearer file-token"}


def test_base_url() -> None:
    assert base_url() == "http://127.0.0.1:8014"
    assert base_url(ApiSettings(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert base_url(ApiSettings(host="::1", port=9000)) == "http://[::1]:9000"
    assert base_url(None, "http://h:1/") == "http://h:1"
