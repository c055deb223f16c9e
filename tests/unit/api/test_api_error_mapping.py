"""colo.api.errors (which status each colo error answers, the token never echoed) and colo.api.gpu_view
(``GET /gpu/info`` joins each GPU process and MPS client to its agent, by pid or an ancestor's)."""

from __future__ import annotations

import os

from colo.api.errors import error_body, error_status, redact
from colo.api.gpu_view import agent_of, gpu_info_document
from colo.errors import ColoError, ConfigError, DoesNotFitError, GpuError, MpsError, SupervisorError, UsageError
from colo.gpu.poller import GpuState
from colo.supervise.snapshots import AgentStatus
from colo.supervise.state import AgentState


def test_each_error_kind_has_its_status() -> None:
    assert error_status(ConfigError("bad", field="agents.a.margin")) == 422
    assert error_status(DoesNotFitError("no room", agents=("a",))) == 422
    assert error_status(UsageError("no")) == 400
    assert error_status(SupervisorError("busy")) == 409
    assert error_status(GpuError("no NVML")) == 503 and error_status(MpsError("no daemon")) == 503
    assert error_status(ColoError("other")) == 500


def test_bodies_carry_the_field_or_the_agents_and_never_the_token() -> None:
    body = error_body(ConfigError("token s3cret is wrong", source="colo.yaml", field="api.token", line=3), "s3cret")
    assert "s3cret" not in str(body) and body["field"] == "api.token" and body["line"] == 3
    assert body["message"] == "token <redacted> is wrong"
    assert error_body(DoesNotFitError("no room", agents=("a", "b")), "")["agents"] == ["a", "b"]
    assert redact("abc", "") == "abc"


def _status(name: str, pid: int | None, uuid: str | None) -> AgentStatus:
    return AgentStatus(name, AgentState.RUNNING, pid, "local:0", uuid, 1 << 30, 1 << 29, "medium", 0)


def test_gpu_info_joins_processes_and_clients_to_agents() -> None:
    me = os.getpid()
    info = {
        "processes": [{"pid": me}, {"pid": 999_999_999}],
        "gpus": [{"uuid": "GPU-1", "processes": [{"pid": me}], "mps": {"servers": [{"client_pids": [me]}]}}],
    }
    state = GpuState(info)
    doc = gpu_info_document(state, [_status("critic", me, "GPU-1"), _status("idle", None, None)])
    assert [p["agent"] for p in doc["processes"]] == ["critic", None]
    assert doc["gpus"][0]["mps"]["servers"][0]["clients"] == [{"pid": me, "agent": "critic"}]
    assert doc["gpus"][0]["agents"] == ["critic"]
    assert "agent" not in state.info["processes"][0]  # the state is left as it was
    assert agent_of(me, {os.getppid(): "parent"}) == "parent"  # a forked worker belongs to its agent
