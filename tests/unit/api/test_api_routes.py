"""Every route of the colo API, its errors and its auth, through FastAPI's test client and a fake source."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fakes import NEWSROOM, TOKEN, UUID0, FakeSource, gpu_source, newsroom_source
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from colo.api.app import create_app
from colo.api.context import ApiOptions
from colo.clock import FakeClock
from colo.errors import DoesNotFitError, GpuError, SupervisorError
from colo.gpu.fake_nvml import FakeGpuBackend
from colo.plan.allocation_doc import allocation_document
from colo.units import MIB

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client_for(
    source: FakeSource, *, open_reads: bool = True, clock: FakeClock | None = None, options: ApiOptions | None = None
) -> TestClient:
    app = create_app(source, token=TOKEN, open_reads=open_reads, options=options, clock=clock or FakeClock())
    return TestClient(app, raise_server_exceptions=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: MPS pipe dirs must stay under the Unix socket path limit."""
    path = Path(tempfile.mkdtemp(prefix="colo-api-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def source() -> FakeSource:
    return newsroom_source()


@pytest.fixture
def client(source: FakeSource) -> TestClient:
    return client_for(source)


# --- reads -------------------------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_allocation_is_the_seed_document(client: TestClient, source: FakeSource) -> None:
    r = client.get("/mps/allocation")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc == json.loads(json.dumps(allocation_document(source.plan)))
    alloc = doc["mps_resource_allocation"]
    assert set(alloc) >= {"agent_allocations", "system_summary"}
    critic = alloc["agent_allocations"]["critic"]
    assert critic["mps_memory_limit_gb"] == 4.0
    assert critic["models"] == ["unitary/unbiased-toxic-roberta", "unitary/toxic-bert"]
    assert alloc["system_summary"]["total_agents"] == 9


def test_allocation_rendered_once_per_plan(source: FakeSource) -> None:
    clock = FakeClock()
    app = create_app(source, token=TOKEN, clock=clock, options=ApiOptions(read_ttl_secs=0.5))
    cache = app.state.ctx.allocation_cache
    renders: list[object] = []
    inner = cache._render
    cache._render = lambda p: renders.append(p) or inner(p)
    client = TestClient(app)
    first = client.get("/mps/allocation").content
    clock.advance(10)  # the body's TTL passes, but the plan is the same object: not rendered again
    assert client.get("/mps/allocation").content == first
    assert len(renders) == 1
    # A new plan (a reload made outside this API) is served once the body's TTL has passed.
    source.plan = dataclasses.replace(source.plan, placement="spread")
    assert client.get("/mps/allocation").content == first
    clock.advance(0.5)
    second = client.get("/mps/allocation").json()
    assert len(renders) == 2
    assert second["colo"]["placement"] == "spread"


def test_gpu_info_without_gpu_says_why(client: TestClient) -> None:
    r = client.get("/gpu/info")
    assert r.status_code == 200
    doc = r.json()
    assert doc["mps_enabled"] is False
    assert doc["mps"] == {"enabled": False, "pipe_dir": None, "control_process": False}
    assert "nvidia-smi" in doc["error"]
    assert doc["gpus"] == []


def test_gpu_info_when_nvml_fails_is_not_a_500() -> None:
    src = newsroom_source(backend=FakeGpuBackend(error=GpuError("NVML: driver not loaded", hint="try nvidia-smi")))
    doc = client_for(src).get("/gpu/info").json()
    assert doc["mps_enabled"] is False
    assert "driver not loaded" in doc["error"]


def test_gpu_info_shows_daemon_clients_and_agents(short_tmp: Path) -> None:
    src, _ = gpu_source(short_tmp)
    doc = client_for(src).get("/gpu/info").json()
    pipe = str(short_tmp / "mps" / UUID0 / "pipe")
    assert doc["mps_enabled"] is True
    assert doc["mps"]["enabled"] is True
    assert doc["mps"]["control_process"] is True
    assert doc["mps"]["pipe_dir"] == pipe
    (gpu,) = doc["gpus"]
    assert gpu["memory_total_bytes"] == 80 * 1024 * MIB
    assert gpu["temperature_c"] == 35
    daemon = gpu["mps"]
    assert daemon["running"] is True and daemon["healthy"] is True
    assert daemon["pipe_dir"] == pipe and daemon["control_pid"] is not None
    (server,) = daemon["servers"]
    assert server["status"] == "ACTIVE" and server["client_pids"] == [1000, 1001]
    names = {a.name for a in src.snapshot().agents}
    pid_to_agent = {s.pid: s.name for s in src.snapshot().agents}
    assert server["clients"] == [{"pid": 1000, "agent": pid_to_agent[1000]}, {"pid": 1001, "agent": pid_to_agent[1001]}]
    procs = {p["pid"]: p for p in gpu["processes"]}
    assert procs[1000]["used_memory_bytes"] == 900 * MIB and procs[1000]["agent"] in names
    assert procs[77777]["agent"] is None and procs[77777]["is_mps_client"] is False
    assert set(gpu["agents"]) == names
    assert {p["pid"]: p["agent"] for p in doc["processes"]} == {p: procs[p]["agent"] for p in procs}


def test_gpu_info_daemon_error_is_reported_per_gpu(short_tmp: Path) -> None:
    src, control = gpu_source(short_tmp)
    control.hang(short_tmp / "mps" / UUID0 / "pipe")
    doc = client_for(src).get("/gpu/info").json()
    daemon = doc["gpus"][0]["mps"]
    assert daemon["running"] is True and daemon["healthy"] is False
    assert "does not answer" in daemon["error"]
    assert doc["mps_enabled"] is False  # a daemon that does not answer is not MPS in service


def test_gpu_info_fault_and_stopped_daemon(short_tmp: Path) -> None:
    clock = FakeClock()
    src, control = gpu_source(short_tmp, clock)
    pipe = short_tmp / "mps" / UUID0 / "pipe"
    control.fault(pipe)
    client = client_for(src, clock=clock)
    assert client.get("/gpu/info").json()["gpus"][0]["mps"]["servers"][0]["status"] == "FAULT"
    assert "colo_mps_server_active{" in client.get("/metrics").text
    assert src.fleet is not None
    [d.stop() for d in src.fleet.daemons()]
    clock.advance(10)
    doc = client.get("/gpu/info").json()
    assert doc["mps_enabled"] is False and doc["mps"]["control_process"] is False
    assert doc["gpus"][0]["mps"]["running"] is False


def test_gpu_state_is_read_once_per_poll(short_tmp: Path) -> None:
    clock = FakeClock()
    src, _ = gpu_source(short_tmp, clock)  # the source's one poller: at most one read per second
    client = client_for(src, clock=clock)
    assert src.backend is not None
    client.get("/gpu/info")
    calls = src.backend.calls
    client.get("/gpu/info")
    client.get("/metrics")
    assert src.backend.calls == calls
    clock.advance(1.5)
    client.get("/gpu/info")
    assert src.backend.calls > calls


def test_metrics_names_and_values(short_tmp: Path) -> None:
    src, _ = gpu_source(short_tmp)
    r = client_for(src).get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    critic = src.snapshot().agent("critic")
    lab = (("agent", "critic"), ("gpu", "0"), ("uuid", critic.gpu_uuid))
    assert samples[("colo_agent_memory_used_bytes", lab)] == critic.memory_used_bytes
    assert samples[("colo_agent_memory_limit_bytes", lab)] == critic.limit_bytes
    assert samples[("colo_agent_restarts_total", (("agent", "critic"),))] == 1
    assert samples[("colo_agent_state", (("agent", "critic"), ("state", "RUNNING")))] == 1
    assert samples[("colo_agent_state", (("agent", "critic"), ("state", "FATAL")))] == 0
    gpu = (("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3"), ("uuid", critic.gpu_uuid))
    assert samples[("colo_gpu_memory_used_bytes", gpu)] == 3 * 1024 * MIB
    assert samples[("colo_gpu_temperature_celsius", gpu)] == 35
    assert samples[("colo_gpu_power_watts", gpu)] == 70
    assert samples[("colo_mps_daemon_up", (("gpu", "0"), ("uuid", critic.gpu_uuid)))] == 1
    assert samples[("colo_mps_clients", (("gpu", "0"), ("uuid", critic.gpu_uuid)))] == 2
    assert samples[("colo_plan_agents", ())] == 9
    assert samples[("colo_plan_allocated_bytes", ())] == src.plan.summary.allocated_bytes
    assert samples[("colo_gpu_scrape_ok", ())] == 1


def test_metrics_without_gpu_still_answer(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert "colo_gpu_scrape_ok 0.0" in text
    assert "colo_plan_agents 9.0" in text


# --- agents ------------------------------------------------------------------------------------------------


def test_agents_list_and_one(client: TestClient, source: FakeSource) -> None:
    agents = client.get("/agents").json()["agents"]
    assert {a["name"] for a in agents} == {a.name for a in source.snapshot().agents}
    one = client.get("/agents/critic").json()
    assert one["state"] == "RUNNING"
    assert one["limit_bytes"] == source.snapshot().agent("critic").limit_bytes
    assert one["memory_used_bytes"] == source.snapshot().agent("critic").memory_used_bytes
    assert one["restarts"] == 1 and one["pid"] == source.snapshot().agent("critic").pid


def test_unknown_agent_is_404(client: TestClient) -> None:
    r = client.get("/agents/nobody")
    assert r.status_code == 404
    assert r.json() == {"error": "no agent named 'nobody'"}
    assert client.post("/agents/nobody/restart", headers=AUTH).status_code == 404


def test_bad_agent_name_is_422(client: TestClient) -> None:
    assert client.get("/agents/-bad").status_code == 422


@pytest.mark.parametrize("verb", ["start", "stop", "restart"])
def test_actions_need_the_token(client: TestClient, source: FakeSource, verb: str) -> None:
    assert client.post(f"/agents/critic/{verb}").status_code == 401
    assert client.post(f"/agents/critic/{verb}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post(f"/agents/critic/{verb}", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert source.calls == []
    r = client.post(f"/agents/critic/{verb}", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["action"] == verb and r.json()["status"]["name"] == "critic"
    assert source.calls == [(verb, "critic")]


def test_unknown_action_is_422(client: TestClient) -> None:
    assert client.post("/agents/critic/explode", headers=AUTH).status_code == 422


def test_401_never_echoes_the_token(client: TestClient) -> None:
    r = client.post("/agents/critic/restart", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert r.status_code == 401
    assert TOKEN not in r.text
    assert r.headers["www-authenticate"] == "Bearer"


def test_action_refused_is_409_and_redacted(client: TestClient, source: FakeSource) -> None:
    source.action_error = SupervisorError(f"cannot restart: token {TOKEN} leaked into a message")
    r = client.post("/agents/critic/restart", headers=AUTH)
    assert r.status_code == 409
    assert TOKEN not in r.text
    assert "<redacted>" in r.json()["error"]


def test_closed_reads_need_the_token(source: FakeSource) -> None:
    client = client_for(source, open_reads=False)
    for path in ("/agents", "/agents/critic", "/mps/allocation", "/gpu/info", "/metrics", "/events", "/healthz"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=AUTH).status_code == 200, path


# --- apply -------------------------------------------------------------------------------------------------


def test_apply_yaml(client: TestClient, source: FakeSource) -> None:
    body = NEWSROOM.read_text().replace("margin: 0.5GiB", "margin: 0.75GiB", 1)
    r = client.post("/apply", content=body, headers={**AUTH, "Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "applied": True,
        "restarted": ["critic"],
        "started": [],
        "stopped": [],
        "unchanged": ["analyst", "balancer"],
        "left_out": [],
    }
    assert len(source.applied) == 1
    # The new plan is what /mps/allocation serves now.
    doc = client.get("/mps/allocation").json()
    assert doc["mps_resource_allocation"]["agent_allocations"]["analyst"]["safety_margin_gb"] == 0.75


def test_apply_json(client: TestClient, source: FakeSource) -> None:
    body = {"gpus": [{"memory": "24GiB"}], "models": {"m": {"memory": "1GiB"}}, "agents": {"a": {"models": ["m"]}}}
    r = client.post("/apply", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert list(source.applied[0].agents) == ["a"]


def test_apply_needs_the_token(client: TestClient, source: FakeSource) -> None:
    assert client.post("/apply", content="x: 1").status_code == 401
    assert source.applied == []


def test_apply_invalid_config_is_422_with_field_and_line(client: TestClient, source: FakeSource) -> None:
    body = "models:\n  m: {memory: 1GiB}\nagents:\n  a:\n    models: [m]\n    priority: urgent\n"
    r = client.post("/apply", content=body, headers=AUTH)
    assert r.status_code == 422
    err = r.json()
    assert err["field"] == "agents.a.priority"
    assert err["line"] == 6
    assert err["source"] == "<request body>"
    assert source.applied == []


@pytest.mark.parametrize("body", ["agents: [", "", "just a string", "\xff"])
def test_apply_unparseable_is_422(client: TestClient, body: str) -> None:
    assert client.post("/apply", content=body.encode("latin-1"), headers=AUTH).status_code == 422


def test_apply_that_does_not_fit_is_422(client: TestClient, source: FakeSource) -> None:
    source.apply_error = DoesNotFitError("critic needs 40 GiB; the largest GPU has 24 GiB", agents=("critic",))
    r = client.post("/apply", content=NEWSROOM.read_text(), headers=AUTH)
    assert r.status_code == 422
    assert r.json()["agents"] == ["critic"]
    assert "40 GiB" in r.json()["error"]


def test_apply_while_another_runs_is_409(source: FakeSource) -> None:
    app = create_app(source, token=TOKEN)
    client = TestClient(app)
    lock = app.state.ctx.apply_lock
    assert lock.acquire(blocking=False)
    try:
        r = client.post("/apply", content=NEWSROOM.read_text(), headers=AUTH)
    finally:
        lock.release()
    assert r.status_code == 409
    assert "another apply" in r.json()["error"]
    assert source.applied == []
    assert client.post("/apply", content=NEWSROOM.read_text(), headers=AUTH).status_code == 200


def test_body_over_the_limit_is_413(source: FakeSource) -> None:
    client = client_for(source, options=ApiOptions(max_body_bytes=1000))
    r = client.post("/apply", content=b"#" * 2000, headers=AUTH)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        for _ in range(10):
            yield b"#" * 300

    r = client.post("/apply", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert source.applied == []


# --- events ------------------------------------------------------------------------------------------------


def test_events_list_since_and_limit(client: TestClient) -> None:
    events = client.get("/events").json()["events"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0]["kind"] == "started" and events[0]["agent"] == "critic"
    assert [e["seq"] for e in client.get("/events", params={"since": 3}).json()["events"]] == [4, 5]
    assert [e["seq"] for e in client.get("/events", params={"limit": 2}).json()["events"]] == [1, 2]
    assert client.get("/events", params={"limit": 0}).status_code == 422
    assert client.get("/events", params={"since": -1}).status_code == 422


def test_events_follow_streams_sse(source: FakeSource) -> None:
    class Ticking(FakeClock):
        def monotonic(self) -> float:
            self.advance(1.0)
            return super().monotonic()

    client = client_for(
        source, clock=Ticking(), options=ApiOptions(event_poll_secs=0.0, stream_max_secs=3.0, heartbeat_secs=1.0)
    )
    r = client.get("/events", params={"follow": 1, "since": 3})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f.startswith("id:")]
    assert [f.splitlines()[0] for f in frames] == ["id: 4", "id: 5"]
    data = json.loads(frames[0].splitlines()[2].removeprefix("data: "))
    assert data["seq"] == 4 and data["message"] == "event 4"
    # Last-Event-ID resumes after the last event the client saw.
    r = client.get("/events", params={"follow": 1}, headers={"Last-Event-ID": "4"})
    assert [f.splitlines()[0] for f in r.text.split("\n\n") if f.startswith("id:")] == ["id: 5"]


# --- schema ------------------------------------------------------------------------------------------------


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/healthz",
        "/mps/allocation",
        "/gpu/info",
        "/metrics",
        "/agents",
        "/agents/{name}",
        "/agents/{name}/{action}",
        "/apply",
        "/events",
    }
    assert client.get("/docs").status_code == 200


def test_empty_token_is_refused(source: FakeSource) -> None:
    with pytest.raises(ValueError):
        create_app(source, token="")


def test_usage_history_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from colo.api.metrics import ColoCollector, MetricsInput
    from colo.gpu.poller import no_gpu_state
    from colo.supervise.snapshots import Shape, UsageSample

    usage = [UsageSample("a", 0.0, 10.0, 900 * 2**20, 1024 * 2**20, 5, "local:0", (Shape("m", 32, 512),), 1, 3)]
    reg = CollectorRegistry()
    reg.register(ColoCollector(lambda: MetricsInput((), None, no_gpu_state(), (), usage, 12)))
    text = generate_latest(reg).decode()
    assert 'colo_agent_usage_window_peak_bytes{agent="a",gpu="0"} 9.437184e+08' in text
    assert 'colo_agent_usage_window_peak_ratio{agent="a",gpu="0"} 0.87890625' in text
    assert 'colo_agent_usage_window_oom{agent="a",gpu="0"} 1.0' in text
    assert 'colo_agent_largest_batch_rows{agent="a",model="m"} 32.0' in text
    assert "colo_usage_history_rows 12.0" in text
