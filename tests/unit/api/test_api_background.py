"""colo.api.background: the API served from a thread of ``colo up`` (a real orchestrator on fakes, uvicorn on a
loopback port): it answers with the state dir's token, its address is recorded for ``colo status``, ``stop``
ends it; a port already taken is a warning and no API, never an exception."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from colo.api.background import serve_in_thread
from colo.clock import FakeClock
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner
from colo.spec import load_config_text
from colo.supervise.orchestrator import Orchestrator
from testkit import short_state_dir

CFG = """
version: 1
gpus: auto
policy: {{mps: off}}
api: {{host: 127.0.0.1, port: {port}}}
models:
  small: {{memory: 1GiB}}
agents:
  a: {{models: [small], command: [bin-a], health: {{type: none, start_secs: 1}}}}
"""


@pytest.fixture
def orch(unused_port: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orchestrator]:
    monkeypatch.delenv("COLO_API_TOKEN", raising=False)
    state = short_state_dir()
    o = Orchestrator(
        load_config_text(CFG.format(port=unused_port), "t.yaml"), state_dir=state,
        gpu_backend=FakeGpuBackend([fake_gpu(0)]), runner=FakeRunner(), probe=lambda c: HealthResult(True, "ok"),
        clock=FakeClock(),
    )
    o.up()
    try:
        yield o
    finally:
        o.down()
        shutil.rmtree(state, ignore_errors=True)


def _answers(url: str, **kw: object) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2.0, **kw)  # type: ignore[arg-type]
    except httpx.TransportError:
        return None


def _until(pred: object, timeout_secs: float = 10.0) -> object:
    deadline = time.monotonic() + timeout_secs
    value = None
    while time.monotonic() < deadline:
        value = pred()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    return value


def test_the_api_serves_with_the_state_dirs_token_and_stops(orch: Orchestrator, unused_port: int) -> None:
    warnings: list[str] = []
    api = serve_in_thread(orch, orch.paths.root, warnings.append)
    assert api is not None and warnings == []  # loopback: nothing to warn about
    try:
        assert api.url == f"http://127.0.0.1:{unused_port}"
        assert orch.store.get_meta("api_url") == api.url
        up = _until(lambda: _answers(api.url + "/healthz"))
        assert isinstance(up, httpx.Response) and up.json()["status"] == "ok"
        token = (orch.paths.root / "api-token").read_text().strip()
        agents = httpx.get(api.url + "/agents", headers={"Authorization": f"Bearer {token}"}, timeout=5.0)
        assert agents.status_code == 200 and "a" in agents.text
        denied = httpx.post(api.url + "/agents/a/restart", timeout=5.0)  # writes need the token
        assert denied.status_code == 401
    finally:
        api.stop()
    assert _until(lambda: _answers(api.url + "/healthz") is None), "the API still answers after stop()"


def test_a_busy_port_is_a_warning_and_no_api(orch: Orchestrator, unused_port: int) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", unused_port))
        taken.listen(1)
        warnings: list[str] = []
        assert serve_in_thread(orch, orch.paths.root, warnings.append) is None
    assert len(warnings) == 1 and warnings[0].startswith("the HTTP API did not start: ")
    assert f"port {unused_port}" in warnings[0] and "already in use" in warnings[0]
    assert orch.store.get_meta("api_url", None) is None
