"""How the agent's device thread waits for a batch on CUDA (``--cuda-wait`` / ``COLO_CUDA_WAIT``): spinning,
sleeping on a blocking event, or ``auto`` (spin for a lone request, sleep under load), chosen per batch by the
runtime and passed down to the forward. The GPU test ``tests/gpu/test_graphs_gpu.py`` runs the blocking wait
on CUDA."""

from __future__ import annotations

from typing import Any

import pytest
from modelserver_fakes import StepClock, tiny_loader

from colo.errors import UsageError
from colo.modelserver import runtime as runtime_module
from colo.modelserver import serve
from colo.modelserver.command import CUDA_WAIT_VAR
from colo.modelserver.inference import CudaWait, synchronize
from colo.modelserver.runtime import AgentRuntime, InferInput
from colo.spec.config import ModelSpec

SPECS = [("enc", ModelSpec(batch_size=4, max_seq_len=16))]
LONE = [[5 + (c * 7) % 90 for c in range(16)]]


@pytest.mark.parametrize(
    ("mode", "requests", "waiting", "blocks"),
    [
        (CudaWait.SPIN, 1, 0, False),
        (CudaWait.SPIN, 4, 9, False),
        (CudaWait.BLOCK, 1, 0, True),
        (CudaWait.BLOCK, 3, 2, True),
        (CudaWait.AUTO, 1, 0, False),  # a lone request: the fastest wake-up
        (CudaWait.AUTO, 2, 0, True),  # a merged batch: the device is busy
        (CudaWait.AUTO, 1, 1, True),  # a request waiting behind it
    ],
)
def test_which_batches_wait_sleeping(mode: CudaWait, requests: int, waiting: int, blocks: bool) -> None:
    assert mode.blocks(requests=requests, waiting=waiting) is blocks


def test_the_switch_its_environment_default_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--agent", "a", "--config", "c"]
    monkeypatch.delenv(CUDA_WAIT_VAR, raising=False)
    assert serve.parse_args(base).cuda_wait is CudaWait.AUTO
    assert serve.parse_args([*base, "--cuda-wait", "BLOCK"]).cuda_wait is CudaWait.BLOCK
    monkeypatch.setenv(CUDA_WAIT_VAR, "spin")
    assert serve.parse_args(base).cuda_wait is CudaWait.SPIN
    assert serve.parse_args([*base, "--cuda-wait", "auto"]).cuda_wait is CudaWait.AUTO
    monkeypatch.setenv(CUDA_WAIT_VAR, "yield")
    with pytest.raises(UsageError, match=CUDA_WAIT_VAR) as raised:
        serve.parse_args(base)
    assert "'yield'" in str(raised.value)
    with pytest.raises(UsageError):
        serve.parse_args([*base, "--cuda-wait", "sometimes"])


@pytest.mark.parametrize(("mode", "blocks"), [(CudaWait.AUTO, False), (CudaWait.SPIN, False), (CudaWait.BLOCK, True)])
def test_the_runtime_passes_its_choice_to_the_forward(
    monkeypatch: pytest.MonkeyPatch, mode: CudaWait, blocks: bool
) -> None:
    seen: list[bool] = []
    real = runtime_module.run_merged

    def spy(*args: Any, block_wait: bool = False, **kwargs: Any) -> Any:
        seen.append(block_wait)
        return real(*args, block_wait=block_wait, **kwargs)

    monkeypatch.setattr(runtime_module, "run_merged", spy)
    rt = AgentRuntime(agent="critic", specs=SPECS, device="cpu", loader=tiny_loader({"enc": "bert"}),
                      clock=StepClock(), cuda_wait=mode, cuda_graphs=False)
    try:
        rt.load()
        seen.clear()  # the warm-up's batches
        assert rt.infer(InferInput(model="enc", input_ids=LONE))["kind"] == "embeddings"
    finally:
        rt.close()
    assert seen == [blocks]


def test_waiting_on_a_cpu_touches_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def no_cuda(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("CUDA asked for on a CPU device")

    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    monkeypatch.setattr(torch.cuda, "Event", no_cuda)
    synchronize("cpu")
    synchronize("cpu", block=True)
    with pytest.raises(AssertionError):  # the same calls on a CUDA device do ask
        synchronize("cuda", block=True)
    with pytest.raises(AssertionError):
        synchronize("cuda:0")
