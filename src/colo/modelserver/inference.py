"""One batch through one loaded model: padding, the forward (or greedy generation), and plain outputs.

Encoders return what their head gives: class predictions from ``logits`` of shape [batch, labels],
per-token predictions from [batch, tokens, vocab], else mean-pooled embeddings of ``last_hidden_state``
(what sentence-transformers computes for its mean-pooling models). Generators and seq2seq models return the
greedily generated ids (decoded too when a real tokenizer is there).

Everything runs under ``torch.inference_mode()``; on CUDA the device is synchronised before timing, so
``forward_ms`` is the GPU time of the batch, not the launch time. An encoder batch of rows of one length may be
replayed from a CUDA graph instead of run eagerly (:mod:`colo.modelserver.graphs`); its outputs are formatted by
the same code. torch is imported inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from colo.clock import SYSTEM_CLOCK, Clock
from colo.modelserver.device_errors import DeviceErrorKind, classify
from colo.modelserver.graphs import EncoderGraphs
from colo.modelserver.loading import LoadedModel

# Embeddings are returned in full up to this many values in a batch; beyond, shape and a head per row.
FULL_EMBEDDING_VALUES = 4096
EMBEDDING_HEAD_VALUES = 8


@dataclass(frozen=True)
class BatchResult:
    """Outputs of one batch (JSON-ready, or with numpy arrays when asked ``raw``), and where its time went in
    milliseconds: ``to_device_ms`` (padding, host→device copy), ``forward_ms`` (device time of the forward or
    the generation), ``to_host_ms`` (device→host copy and formatting)."""

    outputs: dict[str, Any]
    forward_ms: float
    to_device_ms: float = 0.0
    to_host_ms: float = 0.0


def is_oom(exc: BaseException) -> bool:
    """True for a device allocation failure: CUDA out of memory (torch's OutOfMemoryError, or CUDA's error text
    under MPS) or a cuBLAS/cuDNN workspace that could not be allocated."""
    return classify(exc) is DeviceErrorKind.ALLOC_FAILED


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool, device: str) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` long tensors of shape [len(rows), longest row] on ``device``.

    ``left`` pads on the left (decoder-only generation continues from the last position). Both are built in
    one numpy array on the host and cross to a CUDA device in ONE copy, from pinned memory (PyTorch's caching
    host allocator reuses the pinned block, so pinning costs nothing after the first batches of a shape).
    """
    import numpy as np
    import torch

    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every row needs at least one token id")
    width = max(len(r) for r in rows)
    both = np.zeros((2, len(rows), width), dtype=np.int64)  # [0]: ids, [1]: mask
    both[0].fill(pad_id)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        both[0, i, span] = row
        both[1, i, span] = 1
    host = torch.from_numpy(both)
    if device.startswith("cuda"):
        host = host.pin_memory().to(device, non_blocking=True)
    return host[0], host[1]


class CudaWait(StrEnum):
    """How the device thread waits for a batch's forward on CUDA (``--cuda-wait``, ``COLO_CUDA_WAIT``).

    ``spin``: ``torch.cuda.synchronize``, which busy-waits — the fastest wake-up, one CPU core held for the
    whole forward. ``block``: an event made with ``blocking=True`` (``cudaEventBlockingSync``): the thread sleeps
    until the GPU is done, leaving the core to the agent's event loop and to the other agents. ``auto``: spin
    for a batch of one request with nothing waiting behind it (a lone request's latency), block otherwise
    (under load, where cores are what an agent's HTTP side needs). Waits for the host→device copy always spin
    (they are microseconds)."""

    SPIN = "spin"
    BLOCK = "block"
    AUTO = "auto"

    def blocks(self, *, requests: int, waiting: int) -> bool:
        """Whether a batch of ``requests`` requests, with ``waiting`` more queued behind it, waits blocking."""
        if self is CudaWait.AUTO:
            return requests > 1 or waiting > 0
        return self is CudaWait.BLOCK


def synchronize(device: str, *, block: bool = False) -> None:
    """Wait for queued work on a CUDA device (no-op on CPU): spinning (every stream of the device), or
    ``block``: sleeping on a blocking event recorded on the calling thread's current stream (where the agent's
    device thread runs all its work, :func:`colo.modelserver.cuda_graphs.use_own_stream`)."""
    import torch

    if not device.startswith("cuda"):
        return
    if block:
        event = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
        event.record()
        event.synchronize()
    else:
        torch.cuda.synchronize(device)


def _first_tensor(out: Any, names: Sequence[str]) -> tuple[str, Any] | None:
    for name in names:
        value = getattr(out, name, None)
        if value is None and isinstance(out, dict):
            value = out.get(name)
        if value is not None and hasattr(value, "dim"):
            return name, value
    return None


def _encoder_tensor(out: Any) -> tuple[str, Any]:
    """The tensor an encoder's answer is made from: ``("logits", t)`` or ``("hidden", t)``."""
    found = _first_tensor(out, ("logits", "prediction_logits"))
    if found is not None and found[1].dim() in (2, 3):
        return "logits", found[1]
    hidden_found = _first_tensor(out, ("last_hidden_state",))
    if hidden_found is not None:
        return "hidden", hidden_found[1]
    if isinstance(out, tuple | list) and out and hasattr(out[0], "dim"):
        return "hidden", out[0]
    if hasattr(out, "dim"):
        return "hidden", out
    raise TypeError(f"the model returned {type(out).__name__}, which has no logits or hidden states")


def _encoder_outputs(out: Any, mask: Any) -> dict[str, Any]:
    kind, tensor = _encoder_tensor(out)
    return _format_encoder(kind, tensor, mask)


def _raw_encoder(kind: str, tensor: Any, mask: Any, unpadded: bool = False) -> dict[str, Any]:
    """Full outputs as float32 numpy arrays (what the standard routes serve): ``vectors`` [rows, dim] of
    mean-pooled hidden states, or ``logits`` [rows, labels] of a classification head; token-level logits
    have no raw form (``kind`` token_predictions, nothing else)."""
    if kind == "logits":
        if tensor.dim() == 2:
            return {"kind": "classification", "logits": tensor.float().cpu().numpy()}
        return {"kind": "token_predictions"}
    return {"kind": "embeddings", "vectors": _mean_pool(tensor, mask, unpadded).cpu().numpy()}


def _mean_pool(hidden: Any, mask: Any, unpadded: bool = False) -> Any:
    """Mask-weighted mean over tokens as float32 [rows, dim] (a 2-D tensor is already pooled). ``unpadded``:
    the caller knows every row fills the width (a lone request, rows of one length), so the mask is all ones
    and a plain mean gives the same (up to float rounding) in one kernel instead of six."""
    if hidden.dim() == 2:
        return hidden.float()
    if unpadded:
        return hidden.mean(1).float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).float()


def _format_encoder(kind: str, tensor: Any, mask: Any, raw: bool = False, unpadded: bool = False) -> dict[str, Any]:
    import torch

    if raw:
        return _raw_encoder(kind, tensor, mask, unpadded)
    if kind == "logits":
        logits = tensor
        if logits.dim() == 2:
            return {
                "kind": "classification",
                "logits_shape": list(logits.shape),
                "predictions": logits.argmax(-1).tolist(),
            }
        best = logits.argmax(-1)
        lengths = mask.sum(-1).tolist()
        return {
            "kind": "token_predictions",
            "logits_shape": list(logits.shape),
            "predictions": [best[i, : int(n)].tolist() for i, n in enumerate(lengths)],
        }
    pooled = _mean_pool(tensor, mask, unpadded).cpu()  # ONE device→host copy; the norms are taken here
    result: dict[str, Any] = {"kind": "embeddings", "embedding_shape": list(pooled.shape)}
    if pooled.numel() <= FULL_EMBEDDING_VALUES:
        result["embeddings"] = pooled.tolist()
    else:
        result["embeddings_head"] = pooled[:, :EMBEDDING_HEAD_VALUES].tolist()
    result["embedding_norms"] = torch.linalg.vector_norm(pooled, dim=-1).tolist()
    return result


def run_merged(
    model: LoadedModel,
    groups: Sequence[Sequence[Sequence[int]]],
    *,
    device: str,
    clock: Clock = SYSTEM_CLOCK,
    raw: Sequence[bool] = (),
    graphs: EncoderGraphs | None = None,
    block_wait: bool = False,
) -> list[BatchResult]:
    """Run several requests' rows of one encoder as ONE batch; one result per group, as if run alone.

    The rows are right-padded to the longest row of all groups; each group's outputs are cut back to its own
    rows and its own longest row, so an answer does not depend on what it was batched with (up to float
    rounding). ``raw[i]`` asks full numpy outputs for group i (see :func:`_raw_encoder`). The timings are the
    merged batch's. ``graphs``: the forward is replayed from a CUDA graph when they have (or may capture) one
    for the batch (rows of one length, see :meth:`EncoderGraphs.replay`), else run eagerly; ``forward_ms`` is
    the device time either way (a new shape's capture included). ``block_wait``: wait for the forward sleeping,
    not spinning (:class:`CudaWait`). Raises ValueError for a generator (they merge through
    :func:`generate_merged`) and torch's errors as they are.
    """
    import torch

    if model.task != "encoder":
        raise ValueError(f"{model.model_id} is a {model.task}: generators are not merged")
    rows = [row for group in groups for row in group]
    raws = list(raw) + [False] * (len(groups) - len(raw))
    with torch.inference_mode():
        padding = clock.monotonic()
        ids, mask = pad_batch(rows, model.tokenizer.pad_id, left=False, device=device)
        synchronize(device)
        started = clock.monotonic()
        out = graphs.replay(model, rows, ids) if graphs is not None else None
        if out is None:
            out = model.module(input_ids=ids, attention_mask=mask)
        synchronize(device, block=block_wait)
        ended = clock.monotonic()
        # A replayed graph's output is its static output, which the next replay of any graph of the model's pool
        # may overwrite: every group is formatted (copied to the host) below, before this returns and the device
        # thread runs another batch (colo.modelserver.graphs).
        kind, tensor = _encoder_tensor(out)
        formatted: list[dict[str, Any]] = []
        first = 0
        for group, as_raw in zip(groups, raws, strict=True):
            last = first + len(group)
            width = max(len(r) for r in group)
            part = tensor[first:last]
            if part.dim() == 3:
                part = part[:, :width]
            unpadded = all(len(r) == width for r in group)
            formatted.append(_format_encoder(kind, part, mask[first:last, :width], as_raw, unpadded))
            first = last
        to_host_ms = (clock.monotonic() - ended) * 1000.0
    return [
        BatchResult(outputs, (ended - started) * 1000.0, (started - padding) * 1000.0, to_host_ms)
        for outputs in formatted
    ]


def run_batch(
    model: LoadedModel,
    rows: Sequence[Sequence[int]],
    *,
    device: str,
    max_new_tokens: int = 0,
    exact_new_tokens: bool = False,
    clock: Clock = SYSTEM_CLOCK,
    block_wait: bool = False,
) -> BatchResult:
    """Run ``rows`` of token ids through ``model`` on ``device``.

    Generators (``task`` generator/seq2seq) generate ``max_new_tokens`` greedily; ``exact_new_tokens`` keeps
    end-of-sequence from stopping early (the worst case generates every token). ``block_wait``: wait for the
    forward or the generation sleeping, not spinning (:class:`CudaWait`). The caller checks sizes. Raises
    torch's errors as they are (see :func:`is_oom`).
    """
    import torch

    tok = model.tokenizer
    generator = model.task != "encoder"
    left = model.task == "generator"
    with torch.inference_mode():
        padding = clock.monotonic()
        ids, mask = pad_batch(rows, tok.pad_id, left=left, device=device)
        synchronize(device)
        started = clock.monotonic()
        to_device_ms = (started - padding) * 1000.0
        if not generator:
            out = model.module(input_ids=ids, attention_mask=mask)
            synchronize(device, block=block_wait)
            ended = clock.monotonic()
            encoded = _encoder_outputs(out, mask)
            return BatchResult(
                encoded, (ended - started) * 1000.0, to_device_ms, (clock.monotonic() - ended) * 1000.0
            )
        new = max(1, max_new_tokens)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "max_new_tokens": new,
            "do_sample": False,
            "pad_token_id": tok.pad_id,
        }
        if exact_new_tokens:
            kwargs["min_new_tokens"] = new
        generated = model.module.generate(**kwargs)
        synchronize(device, block=block_wait)
        ended = clock.monotonic()
        forward_ms = (ended - started) * 1000.0
    # Decoder-only output repeats the prompt; seq2seq output starts with the decoder start token.
    skip = ids.shape[1] if left else 1
    new_ids = [row[skip:] for row in generated.tolist()]
    to_host_ms = (clock.monotonic() - ended) * 1000.0
    outputs: dict[str, Any] = {
        "kind": "generation",
        "generated_ids": new_ids,
        "generated_tokens": sum(len(r) for r in new_ids),
    }
    texts = [tok.decode(r) for r in new_ids]
    if all(t is not None for t in texts):
        outputs["texts"] = texts
    return BatchResult(outputs, forward_ms, to_device_ms, to_host_ms)


def generate_merged(
    model: LoadedModel,
    jobs: Sequence[tuple[Sequence[Sequence[int]], int]],
    *,
    device: str,
    clock: Clock = SYSTEM_CLOCK,
    block_wait: bool = False,
) -> list[BatchResult]:
    """Generate for several requests of one generator as ONE batch: ``jobs`` are (rows, max_new_tokens); the
    prompts run together for the largest ``max_new_tokens`` (greedy), and each request gets its own rows cut
    back to its own ``max_new_tokens`` — what it would get alone, except that a row which ends early is padded
    to its batch's length, as in any batch. ``forward_ms`` is the merged batch's. The caller keeps the rows
    within the model's ``batch_size`` and every ``max_new_tokens`` within its ``new_tokens`` (the worst case
    the plan sized). Raises torch's errors as they are."""
    if len(jobs) == 1:
        ((rows, new_tokens),) = jobs
        return [
            run_batch(model, rows, device=device, max_new_tokens=new_tokens, clock=clock, block_wait=block_wait)
        ]
    merged = run_batch(
        model,
        [row for rows, _ in jobs for row in rows],
        device=device,
        max_new_tokens=max(n for _, n in jobs),
        clock=clock,
        block_wait=block_wait,
    )
    generated: list[list[int]] = merged.outputs["generated_ids"]
    results: list[BatchResult] = []
    first = 0
    for rows, new_tokens in jobs:
        mine = [row[: max(1, new_tokens)] for row in generated[first : first + len(rows)]]
        first += len(rows)
        outputs: dict[str, Any] = {
            "kind": "generation",
            "generated_ids": mine,
            "generated_tokens": sum(len(r) for r in mine),
        }
        texts = [model.tokenizer.decode(r) for r in mine]
        if all(t is not None for t in texts):
            outputs["texts"] = texts
        results.append(BatchResult(outputs, merged.forward_ms, merged.to_device_ms, merged.to_host_ms))
    return results


def worst_case_rows(model: LoadedModel) -> list[list[int]]:
    """``max_batch`` rows of ``max_seq_len`` valid ids: the input the plan's memory was sized for."""
    limits = model.limits
    span = max(1, model.vocab_size - 1)
    return [
        [1 + (r * 7919 + c * 104729) % span for c in range(limits.max_seq_len)]
        for r in range(limits.max_batch)
    ]
