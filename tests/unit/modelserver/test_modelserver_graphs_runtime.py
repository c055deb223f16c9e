"""CUDA graphs in the agent: the runtime sets them up after its warm-up (budget from the room left, or off and
why), its device thread replays encoder batches through them, ``/health`` and ``/metrics`` report them, and
``--cuda-graphs`` / ``COLO_CUDA_GRAPHS`` switch them off. The fake backend stands in for CUDA."""

from __future__ import annotations

import logging

import pytest
import torch
from modelserver_fakes import StepClock, tiny_loader

from colo.errors import UsageError
from colo.modelserver import serve
from colo.modelserver.command import CUDA_GRAPHS_VAR, MEMORY_CAP_VAR, memory_cap_env, memory_cap_of
from colo.modelserver.fake_graphs import FakeGraphBackend
from colo.modelserver.graphs import DeviceMemory
from colo.modelserver.runtime import AgentRuntime, InferInput
from colo.spec.config import ModelSpec
from colo.units import MIB

SPECS = [
    ("enc", ModelSpec(batch_size=4, max_seq_len=16)),
    ("gen", ModelSpec(batch_size=2, max_seq_len=8, new_tokens=2, task="generator")),
]
KINDS = {"enc": "bert", "gen": "gpt2"}
LONE = [[5 + (c * 7) % 90 for c in range(16)]]


def runtime(**kwargs: object) -> AgentRuntime:
    rt = AgentRuntime(agent="critic", specs=SPECS, device="cpu", loader=tiny_loader(KINDS), clock=StepClock(),
                      **kwargs)  # type: ignore[arg-type]
    rt.load()
    return rt


def test_lone_requests_replay_one_graph_and_answer_as_eagerly() -> None:
    backend = FakeGraphBackend()
    on = runtime(graph_backend=backend, graph_budget_bytes=64 * MIB)
    off = runtime(graph_backend=FakeGraphBackend(), cuda_graphs=False)
    try:
        answers = [on.infer(InferInput(model="enc", input_ids=LONE)) for _ in range(2)]
        eager = off.infer(InferInput(model="enc", input_ids=LONE))
        for answer in answers:
            assert answer["kind"] == "embeddings" and answer["timing"]["forward_ms"] > 0
            assert torch.allclose(torch.tensor(answer["embeddings"]), torch.tensor(eager["embeddings"]), atol=1e-5)
        on.infer(InferInput(model="gen", input_ids=[[5, 6, 7]], max_new_tokens=1))  # a generator: never a graph
        assert backend.captures == [(1, 16)]
        graphs = on.health()["cuda_graphs"]
        assert graphs["enabled"] is True and graphs["off_reason"] is None
        assert (graphs["graphs"], graphs["captures"], graphs["replays"]) == (1, 1, 2)
        assert graphs["pool_bytes"] == 2 * MIB and graphs["budget_bytes"] == 64 * MIB
        assert graphs["models"]["enc"]["shapes"] == ["1x16"]
        metrics = on.metrics_text().decode()
        assert 'colo_agent_cuda_graphs{agent="critic"} 1.0' in metrics
        assert 'colo_agent_cuda_graph_pool_bytes{agent="critic"} 2.097152e+06' in metrics
        switched = off.health()["cuda_graphs"]
        assert switched["enabled"] is False and switched["off_reason"] == "switched off (--cuda-graphs off)"
        assert 'colo_agent_cuda_graphs{agent="critic"} 0.0' in off.metrics_text().decode()
    finally:
        on.close()
        off.close()


def test_the_budget_comes_from_the_room_the_warm_up_left(caplog: pytest.LogCaptureFixture) -> None:
    left = DeviceMemory(reserved_bytes=100 * MIB, peak_reserved_bytes=100 * MIB, free_bytes=30 * MIB)
    with caplog.at_level(logging.INFO, logger="colo.modelserver.runtime"):
        rt = runtime(graph_backend=FakeGraphBackend(memory_now=left))
    assert rt.health()["cuda_graphs"]["budget_bytes"] == 15 * MIB
    assert "CUDA graphs on: encoder batches of one length up to 8×128, pools budget 15.0 MiB (30 MiB left" in caplog.text
    capped = runtime(graph_backend=FakeGraphBackend(memory_now=left), memory_cap_bytes=104 * MIB)
    assert capped.health()["cuda_graphs"]["budget_bytes"] == 2 * MIB  # half of the cap less the peak
    rt.close()
    capped.close()


def test_graphs_are_off_before_loading_on_a_cpu_and_without_an_encoder() -> None:
    unloaded = AgentRuntime(agent="critic", specs=SPECS, device="cpu", loader=tiny_loader(KINDS))
    assert unloaded.health()["cuda_graphs"]["off_reason"] == "not loaded yet"
    cpu = runtime()
    assert cpu.health()["cuda_graphs"]["off_reason"] == "not on CUDA (cpu)"
    assert cpu.infer(InferInput(model="enc", input_ids=LONE))["kind"] == "embeddings"
    generators = AgentRuntime(agent="critic", specs=SPECS[1:], device="cpu", loader=tiny_loader(KINDS),
                              graph_backend=FakeGraphBackend())
    generators.load()
    assert generators.health()["cuda_graphs"]["off_reason"] == "no encoder among the agent's models"
    for rt in (unloaded, cpu, generators):
        rt.close()


def test_the_cuda_graphs_switch_and_its_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--agent", "a", "--config", "c"]
    monkeypatch.delenv(CUDA_GRAPHS_VAR, raising=False)
    assert serve.parse_args(base).cuda_graphs == "on"
    assert serve.parse_args([*base, "--cuda-graphs", "off"]).cuda_graphs == "off"
    assert serve.parse_args([*base, "--cuda-graphs", "OFF"]).cuda_graphs == "off"
    monkeypatch.setenv(CUDA_GRAPHS_VAR, "off")
    assert serve.parse_args(base).cuda_graphs == "off"
    assert serve.parse_args([*base, "--cuda-graphs", "on"]).cuda_graphs == "on"
    monkeypatch.setenv(CUDA_GRAPHS_VAR, "maybe")
    with pytest.raises(UsageError, match=CUDA_GRAPHS_VAR):
        serve.parse_args(base)
    with pytest.raises(UsageError):
        serve.parse_args([*base, "--cuda-graphs", "sometimes"])


def test_the_allocator_cap_is_read_in_one_place() -> None:
    assert memory_cap_of(memory_cap_env(3 * MIB)) == 3 * MIB and memory_cap_of({}) is None
    with pytest.raises(ValueError):
        memory_cap_of({MEMORY_CAP_VAR: "lots"})
