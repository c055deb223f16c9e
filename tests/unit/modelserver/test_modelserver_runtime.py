"""The agent runtime: loading states, warm-up, request checks against the worst case, OOM handling."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from modelserver_fakes import BrokenModule, OomModule, StepClock, tiny_loaded, tiny_loader

from colo.modelserver.runtime import (
    AgentRuntime,
    DeviceOutOfMemory,
    InferInput,
    LoadOutOfMemory,
    NotReady,
    RequestError,
)
from colo.spec.config import ModelSpec

SPECS = [
    ("enc", ModelSpec(batch_size=2, max_seq_len=6)),
    ("gen", ModelSpec(batch_size=2, max_seq_len=5, new_tokens=4, task="generator")),
]
KINDS = {"enc": "bert-cls", "gen": "gpt2"}


def _runtime(worst_case: bool = False, loader: Any = None) -> AgentRuntime:
    return AgentRuntime(agent="critic", specs=SPECS, device="cpu", worst_case=worst_case,
                        loader=loader or tiny_loader(KINDS), clock=StepClock())


@pytest.fixture
def ready() -> AgentRuntime:
    rt = _runtime()
    rt.load()
    return rt


def test_loading_then_ready(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    rt = _runtime(worst_case=True, loader=tiny_loader(KINDS, calls))
    assert rt.health()["status"] == "loading"
    with pytest.raises(NotReady):
        rt.infer(InferInput(texts=["x"]))
    with caplog.at_level(logging.INFO, logger="colo.modelserver.runtime"):
        rt.load()
    assert calls == ["enc", "gen"]
    h = rt.health()
    assert h["status"] == "ready" and h["warm_up"].startswith("worst case") and h["error"] is None
    assert [m["id"] for m in h["models"]] == ["enc", "gen"]
    assert h["models"][0]["weights"] == "random (catalog architecture)"
    assert h["models"][0]["tokenizer"] == "hash fallback"
    assert h["device"] == "cpu" and h["pid"] > 0 and h["rss_bytes"] > 0
    assert "warm-up 2×6" in caplog.text and "warm-up 2×5" in caplog.text  # the worst case, per model


def test_empty_agent_is_refused() -> None:
    with pytest.raises(ValueError):
        AgentRuntime(agent="x", specs=[], device="cpu")


def test_default_model_is_the_first(ready: AgentRuntime) -> None:
    out = ready.infer(InferInput(texts=["good news", "bad news"]))
    assert out["model"] == "enc" and out["kind"] == "classification" and out["batch_size"] == 2
    assert set(out["timing"]) == {"prepare_ms", "queue_ms", "to_device_ms", "forward_ms", "to_host_ms", "total_ms"}
    assert out["timing"]["total_ms"] >= out["timing"]["forward_ms"] > 0
    assert ready.health()["requests"] == 1 and ready.health()["items"] == 2


def test_generator_defaults_to_its_new_tokens(ready: AgentRuntime) -> None:
    out = ready.infer(InferInput(model="gen", input_ids=[[10, 11], [12]]))
    assert out["task"] == "generator" and all(1 <= len(r) <= 4 for r in out["generated_ids"])
    out = ready.infer(InferInput(model="gen", texts=["a b c d e f g"], max_new_tokens=1))
    assert out["truncated"] and out["seq_len"] == 5 and len(out["generated_ids"][0]) == 1


@pytest.mark.parametrize(
    ("req", "words"),
    [
        (InferInput(model="nope", texts=["x"]), "not served"),
        (InferInput(texts=["a", "b", "c"]), "batch_size 2"),
        (InferInput(texts=[]), "empty"),
        (InferInput(), "exactly one"),
        (InferInput(texts=["a"], input_ids=[[1]]), "exactly one"),
        (InferInput(input_ids=[[1, 2, 3, 4, 5, 6, 7]]), "at most 6"),
        (InferInput(input_ids=[[1], []]), "is empty"),
        (InferInput(input_ids=[[1, 101]]), "outside the vocabulary"),
        (InferInput(model="gen", texts=["a"], max_new_tokens=5), "outside 1..4"),
        (InferInput(model="gen", texts=["a"], max_new_tokens=0), "outside 1..4"),
    ],
)
def test_requests_beyond_the_worst_case_are_refused(ready: AgentRuntime, req: InferInput, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        ready.infer(req)
    assert ready.health()["rejected"] == 1 and ready.health()["requests"] == 0


def test_oom_at_load_is_exit_3_with_the_cuda_line(caplog: pytest.LogCaptureFixture) -> None:
    def loader(model_id: str, spec: ModelSpec, **kw: Any) -> Any:
        return tiny_loaded("bert", model_id=model_id, module=OomModule())

    rt = _runtime(loader=loader)
    with caplog.at_level(logging.ERROR), pytest.raises(LoadOutOfMemory) as info:
        rt.load()
    assert info.value.exit_code == 3
    assert "CUDA out of memory while warming up enc" in caplog.text
    h = rt.health()
    assert h["status"] == "failed" and "CUDA out of memory" in h["error"]


def test_other_load_failures_are_reraised() -> None:
    def loader(model_id: str, spec: ModelSpec, **kw: Any) -> Any:
        raise FileNotFoundError("weights gone")

    rt = _runtime(loader=loader)
    with pytest.raises(FileNotFoundError):
        rt.load()
    assert rt.status == "failed" and "FileNotFoundError while loading enc" in (rt.error or "")


def test_request_oom_keeps_the_agent_up(ready: AgentRuntime, caplog: pytest.LogCaptureFixture) -> None:
    ready.models["enc"].module = OomModule()
    with caplog.at_level(logging.ERROR), pytest.raises(DeviceOutOfMemory):
        ready.infer(InferInput(texts=["x"]))
    assert "CUDA out of memory on a request to enc" in caplog.text
    assert ready.health()["out_of_memory"] == 1 and ready.health()["status"] == "ready"
    assert ready.infer(InferInput(model="gen", texts=["x"]))["model"] == "gen"
    ready.models["enc"].module = BrokenModule()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ready.infer(InferInput(texts=["x"]))


def test_concurrent_generator_requests_merge_within_the_batch_size(ready: AgentRuntime) -> None:
    """Generator requests queued together run as one batch (up to batch_size rows), each answered with its
    own max_new_tokens: a generator no longer runs one request per batch, so many clients do not starve."""
    import threading
    import time

    gate = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(5)

    threading.Thread(target=ready._worker.call, args=(hold,), daemon=True).start()
    assert entered.wait(5)
    answers: dict[int, dict[str, Any]] = {}

    def ask(i: int, n: int) -> None:
        answers[i] = ready.infer(InferInput(model="gen", input_ids=[[10 + i, 11]], max_new_tokens=n))

    threads = [threading.Thread(target=ask, args=(i, n)) for i, n in enumerate((2, 4, 3))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while ready._worker.depth < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(5)
    assert [len(answers[i]["generated_ids"][0]) for i in range(3)] == [2, 4, 3]
    batches = sorted(a["device_batch"]["rows"] for a in answers.values())
    assert max(batches) == 2  # batch_size 2: two requests merged, the third in the next batch


def test_matmul_precision_is_set_before_the_models_load_and_reported() -> None:
    import torch

    before = torch.get_float32_matmul_precision()
    try:
        rt = AgentRuntime(agent="critic", specs=SPECS, device="cpu", loader=tiny_loader(KINDS), clock=StepClock(),
                          matmul_precision="high")
        rt.load()
        assert torch.get_float32_matmul_precision() == "high"
        assert rt.health()["matmul_precision"] == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_matmul_precision_in_the_config() -> None:
    from colo.errors import ConfigError
    from colo.spec.load import load_config_text

    base = "version: 1\ngpus: [{name: G, memory: 24GiB}]\nmodels: {m: {memory: 1GiB}}\nagents:\n  a: {models: [m]%s}\n"
    assert load_config_text(base % "", "c.yaml").agents["a"].matmul_precision == "high"
    assert load_config_text(base % ", matmul_precision: highest", "c.yaml").agents["a"].matmul_precision == "highest"
    with pytest.raises(ConfigError, match="matmul_precision"):
        load_config_text(base % ", matmul_precision: fast", "c.yaml")
