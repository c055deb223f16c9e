"""The profiling child: ``python -m colo.profiling.child`` (protocol in :mod:`colo.profiling.protocol`).

Runs in a fresh process so that its CUDA context, allocator cache and NVML figure belong to the models under
test alone (and, under MPS, to one MPS client with the limit the parent set in its environment). Loads every
requested model as an agent would (all in one process), then runs each at its worst case, one after the other.

Exit status: 0 ok, 3 out of memory, 2 bad request or model, 1 anything else — always after a ``result``
line when the protocol channel still works.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from colo.errors import ColoError, ConfigError
from colo.profiling.protocol import ChildResult, ModelRun, ProfileRequest, encode_event

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_OOM = 0, 1, 2, 3


def tensor_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers, each storage counted once (tied weights once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


class _Channel:
    """The protocol: events out on the saved stdout, handshake lines in on stdin."""

    def __init__(self, out: IO[str], inp: IO[str], handshake: bool) -> None:
        self.out, self.inp, self.handshake = out, inp, handshake

    def send(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def wait_go(self) -> None:
        if self.handshake:
            self.inp.readline()


def _peaks(torch: Any, device: str) -> tuple[int, int]:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
    return 0, 0


def run(request: ProfileRequest, channel: _Channel) -> ChildResult:
    """Do what ``request`` asks; raise on failure (the caller turns exceptions into a failed result)."""
    started = time.monotonic()
    import torch
    import transformers

    from colo.memory import build

    device = request.device
    cuda = device.startswith("cuda")
    name = "cpu"
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device is visible to the profiling child", hint="check CUDA_VISIBLE_DEVICES")
        torch.zeros(1, device=device)  # creates the context
        torch.cuda.synchronize()
        name = torch.cuda.get_device_name(device)
    channel.send(encode_event("context", pid=os.getpid(), device=device, device_name=name))
    channel.wait_go()

    built = []
    for m in request.models:
        b = build.build(m.model, dtype=m.dtype, device=device, path=m.path, random_weights=m.random_weights)
        build.check_shape(b.source, m.seq_len, m.new_tokens)
        built.append((m, b, tensor_bytes(b.module)))
    if cuda:
        torch.cuda.synchronize()
    weights_total = sum(w for _, _, w in built)
    load_alloc, load_reserved = _peaks(torch, device)
    channel.send(encode_event("loaded", weights_bytes=weights_total, allocated_peak_bytes=load_alloc))
    channel.wait_go()

    runs = []
    alloc_peak, reserved_peak = load_alloc, load_reserved
    for m, b, weights in built:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        tokens = 0
        for i in range(request.repeats):
            tokens = build.run_worst_case(b, m.batch_size, m.seq_len, m.new_tokens, seed=i)
        if cuda:
            torch.cuda.synchronize()
        alloc, reserved = _peaks(torch, device)
        alloc_peak, reserved_peak = max(alloc_peak, alloc), max(reserved_peak, reserved)
        runs.append(
            ModelRun(
                model=m.model,
                weights=b.source.weights,
                description=b.source.description,
                weights_bytes=weights,
                allocated_peak_bytes=alloc,
                reserved_peak_bytes=reserved,
                tokens=tokens,
                secs=round(time.monotonic() - t0, 4),
            )
        )
    return ChildResult(
        ok=True,
        pid=os.getpid(),
        device=device,
        device_name=name,
        torch_version=str(torch.__version__),
        transformers_version=str(transformers.__version__),
        cuda_version=str(torch.version.cuda or ""),
        weights_bytes=weights_total,
        allocated_peak_bytes=alloc_peak,
        reserved_peak_bytes=reserved_peak,
        duration_secs=round(time.monotonic() - started, 4),
        runs=tuple(runs),
    )


def _is_oom(exc: BaseException) -> bool:
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    # cuBLAS/cuDNN handles allocate workspace too: under a tight MPS limit they fail with *_ALLOC_FAILED
    return "out of memory" in text.lower() or "CUDA_ERROR_OUT_OF_MEMORY" in text or "ALLOC_FAILED" in text


def main() -> int:
    """Entry point: read the request from stdin, answer on the real stdout, everything else to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    channel = _Channel(out, sys.stdin, handshake=False)
    try:
        request = ProfileRequest.from_json(sys.stdin.readline())
    except ColoError as exc:
        channel.send(_failure(request_device="?", exc=exc, kind="config"))
        return EXIT_CONFIG
    channel.handshake = request.handshake
    try:
        result = run(request, channel)
    except ColoError as exc:
        kind = "oom" if _is_oom(exc) else "config"
        channel.send(_failure(request.device, exc, kind))
        return EXIT_OOM if kind == "oom" else EXIT_CONFIG
    except Exception as exc:
        kind = "oom" if _is_oom(exc) else "error"
        channel.send(_failure(request.device, exc, kind))
        return EXIT_OOM if kind == "oom" else EXIT_ERROR
    channel.send(_json(result.to_event()))
    return EXIT_OK


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data)


def _failure(request_device: str, exc: BaseException, kind: str) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    result = ChildResult(
        ok=False,
        pid=os.getpid(),
        device=request_device,
        error=f"{type(exc).__name__}: {message}"[:2000],
        error_kind=kind,  # type: ignore[arg-type]
    )
    return _json(result.to_event())


if __name__ == "__main__":
    sys.exit(main())
