"""CUDA-graph capture for fixed-shape steps, with an honest eager fallback.

A captured step replays every kernel of one forward with a single launch: for small models the GPU otherwise
idles between Python-issued launches (MPS.md: CUDA graphs made one roberta-base process 2.9× faster on an
H100). Capture can fail for code that synchronises with the host (a data-dependent ``if`` on a tensor);
:func:`capture` then returns None and the caller runs eagerly and says so in its report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def capture(step: Callable[[], Any], *, warmup_steps: int = 3) -> tuple[Any, Any] | None:
    """Warm ``step`` up on a side stream, then capture one call into a CUDA graph.

    Returns ``(graph, output)`` — ``graph.replay()`` reruns the step in place and refreshes ``output`` (the
    tensors ``step`` returned during capture) — or None when capture failed (the error is swallowed; the
    caller falls back to eager mode). Needs ``torch`` and a CUDA device.
    """
    import torch

    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup_steps):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = step()
    except Exception:
        torch.cuda.synchronize()
        return None
    torch.cuda.synchronize()
    return graph, out


def torch_facts() -> dict[str, Any]:
    """torch / CUDA versions and the device this process uses, for the report's machine section."""
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            {
                "device": props.name,
                "device_memory_bytes": int(props.total_memory),
                "sm_count": int(props.multi_processor_count),
            }
        )
    else:
        facts["device"] = "cpu"
    return facts


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str) -> Any:
    """``float16`` / ``bfloat16`` / ``float32`` as a torch dtype. Raises ValueError for others."""
    import torch

    table = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in table:
        raise ValueError(f"dtype {name!r}: use float16, bfloat16 or float32")
    return table[name]
