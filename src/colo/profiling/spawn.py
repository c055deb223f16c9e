"""Run one profiling child and watch it: ``python -m colo.profiling.child``, NVML-sampled throughout.

The child gets the request on stdin and the caller's environment (``PYTHONPATH`` included, MPS variables such
as ``CUDA_MPS_PIPE_DIRECTORY`` / ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` when given), so it runs as an MPS client
when a daemon is up. The parent starts sampling as soon as the child exists, reads the context baseline and
the after-load figure at the two handshakes, and stops sampling when the child has exited.

Raises ProfileError when the child cannot be started, breaks the protocol, or runs past ``timeout_secs``
(it is killed). A child that reports a failure (out of memory, unknown model) is NOT an exception: the
outcome's ``result.ok`` is False with the reason — failures are data.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ProfileError
from colo.gpu.sampler import PeakStats, Sampler
from colo.profiling.protocol import ChildResult, ProfileRequest, decode_event

CHILD_MODULE = "colo.profiling.child"
DEFAULT_TIMEOUT_SECS = 600.0

SamplerFactory = Callable[[int], Sampler]  # pid -> a sampler of that pid (not started)


@dataclass(frozen=True)
class ChildOutcome:
    """What one child did. NVML figures (bytes) are None without a sampler (CPU runs) or when the pid was
    never seen. ``nvml_peak_bytes`` is the highest sample over the child's whole life."""

    result: ChildResult
    returncode: int
    context_bytes: int | None
    loaded_bytes: int | None
    nvml_peak_bytes: int | None
    sampler: PeakStats | None
    stderr_tail: str
    wall_secs: float


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``base`` (default: ours) + ``extra``, with ``PYTHONPATH`` covering colo."""
    env = dict(os.environ if base is None else base)
    env.update(extra or {})
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../src
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in parts:
        parts.insert(0, here)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the child never downloads
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _reader_thread(stream: IO[str], out: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            out.put(line)
    finally:
        out.put(None)


def run_child(
    request: ProfileRequest,
    *,
    sampler_factory: SamplerFactory | None = None,
    env: Mapping[str, str] | None = None,
    timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    python: str = sys.executable,
    clock: Clock = SYSTEM_CLOCK,
) -> ChildOutcome:
    """Start the child for ``request``, sample it, follow the protocol, return the outcome.

    ``env``: the child's full environment (default :func:`child_env`). Raises ProfileError (see module doc).
    """
    started = clock.monotonic()
    deadline = started + timeout_secs
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as err_file:
        try:
            proc = subprocess.Popen(
                [python, "-m", CHILD_MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
                env=dict(env) if env is not None else child_env(),
            )
        except OSError as exc:
            raise ProfileError(f"cannot start the profiling child with {python} ({exc})") from exc
        sampler = sampler_factory(proc.pid).start() if sampler_factory else None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_reader_thread, args=(proc.stdout, lines), daemon=True)
        reader.start()
        context_bytes = loaded_bytes = None
        result: ChildResult | None = None
        try:
            assert proc.stdin is not None
            proc.stdin.write(request.to_json() + "\n")
            proc.stdin.flush()
            while result is None:
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    raise ProfileError(
                        f"the profiling child ran past {timeout_secs:.0f} s and was killed",
                        hint="profile fewer or smaller models at a time, or raise --timeout",
                    )
                try:
                    line = lines.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    break  # the child closed stdout: exited
                event = decode_event(line)
                if event is None:
                    continue
                kind = event["event"]
                if kind in ("context", "loaded"):
                    sample = sampler.sample_once() if sampler else None
                    reading = sample.memory_of(proc.pid) if sample else None
                    if kind == "context":
                        context_bytes = reading
                    else:
                        loaded_bytes = reading
                    if request.handshake:
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                elif kind == "result":
                    result = ChildResult.from_event(event)
            try:
                returncode = proc.wait(timeout=max(deadline - clock.monotonic(), 1.0))
            except subprocess.TimeoutExpired as exc:
                raise ProfileError("the profiling child did not exit after its result") from exc
        except BrokenPipeError as exc:
            returncode = proc.wait(timeout=30)
            if result is None:
                raise ProfileError(
                    f"the profiling child exited early (status {returncode}): {_tail(err_file)}"
                ) from exc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            stats = sampler.stop().peak(proc.pid) if sampler else None
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            reader.join(timeout=5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        tail = _tail(err_file)
    if result is None:
        raise ProfileError(f"the profiling child exited with status {returncode} and no result: {tail}")
    return ChildOutcome(
        result=result,
        returncode=returncode,
        context_bytes=context_bytes,
        loaded_bytes=loaded_bytes,
        nvml_peak_bytes=stats.peak_bytes if stats else None,
        sampler=stats,
        stderr_tail=tail,
        wall_secs=clock.monotonic() - started,
    )


def _tail(err_file: IO[str], chars: int = 2000) -> str:
    try:
        err_file.seek(0)
        text = err_file.read()
    except (OSError, ValueError):
        return ""
    text = text.strip()
    return text[-chars:] if text else "(no stderr)"
