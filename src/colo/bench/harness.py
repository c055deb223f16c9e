"""Run N benchmark instances together: separate processes, a start barrier, a fixed timed window.

For each point the harness starts one ``python -m colo.bench.instance`` process per :class:`InstanceSpec`,
waits until every one has loaded, warmed up and captured its workload (``READY``), starts the GPU sampler,
sends ``GO`` to all at once, and collects each instance's ``RESULT`` (items, elapsed seconds, per-request
latencies). Any instance that fails, or a timeout, stops every instance of the point and raises
:class:`BenchError` with the failing instance's message and the tail of its stderr.

Processes run in their own session (process group) so a workload's children (``--cmd``) are stopped with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import colo
from colo.bench.gpu_sampler import GpuSampler
from colo.bench.instance import PREFIX
from colo.bench.results import InstanceResult, PointResult
from colo.bench.spec import InstanceSpec
from colo.errors import ColoError


class BenchError(ColoError):
    """A benchmark instance failed or did not answer in time."""


Progress = Callable[[str], None]


def child_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The instance's environment: ``base`` + ``extra``, with colo's source directory on PYTHONPATH (colo
    need not be installed where the benchmark runs, e.g. ``PYTHONPATH=src``)."""
    env = dict(base)
    env.update(extra)
    src = str(Path(colo.__file__).resolve().parents[1])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        parts.insert(0, src)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class _Instance:
    """One child process and the thread that reads its protocol lines into a shared queue."""

    def __init__(
        self, index: int, spec: InstanceSpec, env: Mapping[str, str], python: str, events: queue.Queue[Any]
    ) -> None:
        self.index = index
        self.spec = spec
        self.stderr_file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "colo.bench.instance", spec.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=child_env(env, spec.env),
            text=True,
            start_new_session=True,
        )
        self.ready: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self._reader.start()

    def _read(self, events: queue.Queue[Any]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith(PREFIX):
                continue
            tag, _, body = line[len(PREFIX) :].partition(" ")
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {"message": body.strip()}
            events.put((self.index, tag, payload))
        events.put((self.index, "EOF", {"returncode": self.proc.wait()}))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the instance already exited; its EOF event reports why

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self.stderr_file.seek(0)
            data = self.stderr_file.read()
        except (OSError, ValueError):
            return ""
        return data.decode("utf-8", "replace")[-limit:]

    def stop(self, wait_secs: float) -> None:
        """Close its stdin (an instance still waiting for GO then exits), let it exit on its own for
        ``wait_secs``, then SIGTERM, then SIGKILL its process group."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=wait_secs)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._reader.join(timeout=2.0)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.stderr_file.close()


def _fail(inst: _Instance, what: str, payload: Mapping[str, Any]) -> BenchError:
    message = payload.get("message") or f"exited with status {payload.get('returncode')}"
    detail = str(payload.get("traceback") or inst.stderr_tail()).strip()
    label = inst.spec.label or f"instance {inst.index}"
    text = f"{label} ({inst.spec.describe()}) failed {what}: {message}"
    if detail:
        text += f"\n--- last output ---\n{detail[-1500:]}"
    return BenchError(text, hint="run one instance alone (--concurrency 1) to see the whole error")


def run_point(
    specs: Sequence[InstanceSpec],
    *,
    mode: str,
    env: Mapping[str, str] | None = None,
    sampler: GpuSampler | None = None,
    ready_timeout_secs: float = 900.0,
    result_grace_secs: float = 120.0,
    progress: Progress | None = None,
    name: str | None = None,
    python: str = sys.executable,
    clock: Callable[[], float] = time.monotonic,
) -> PointResult:
    """Run ``specs`` (one instance each) together; return the point's results.

    ``name`` labels progress messages (default ``"<mode> N=<count>"``).
    ``env`` is the environment every instance starts from (default: this process's), e.g. with the MPS pipe
    directory set. ``ready_timeout_secs`` bounds loading + warm-up; ``result_grace_secs`` is how long past the
    timed window a last request may take. Raises BenchError (every instance stopped) on any failure.
    """
    if not specs:
        raise BenchError("no instances to run")
    say = progress or (lambda _msg: None)
    name = name or f"{mode} N={len(specs)}"
    events: queue.Queue[Any] = queue.Queue()
    base_env = dict(os.environ if env is None else env)
    instances: list[_Instance] = []
    activity = None
    try:
        for i, spec in enumerate(specs):
            instances.append(_Instance(i, spec, base_env, python, events))
        say(f"{name}: loading and warming up")
        _collect(instances, events, "READY", clock() + ready_timeout_secs, "while loading", clock)
        if sampler is not None:
            sampler.start([inst.proc.pid for inst in instances])
        for inst in instances:
            inst.send("GO")
        say(f"{name}: running")
        window = max(s.duration_secs for s in specs)
        _collect(instances, events, "RESULT", clock() + window + result_grace_secs, "while running", clock)
        if sampler is not None:
            activity = sampler.stop()
    finally:
        if sampler is not None and activity is None:
            sampler.stop()
        for inst in instances:
            inst.stop(wait_secs=10.0 if inst.result is not None or inst.ready is not None else 0.5)
    results = []
    for inst in instances:
        assert inst.ready is not None and inst.result is not None
        res = inst.result
        results.append(
            InstanceResult(
                index=inst.index,
                label=inst.spec.label,
                pid=int(inst.ready.get("pid", inst.proc.pid)),
                unit=str(res.get("unit", inst.ready.get("unit", "item"))),
                items=float(res["items"]),
                elapsed_secs=float(res["elapsed_secs"]),
                latencies_secs=tuple(float(x) for x in res.get("latencies_secs", ())),
                info=dict(inst.ready.get("info", {})),
                extra={str(k): float(v) for k, v in dict(res.get("extra", {})).items()},
                started_monotonic=float(res.get("started_monotonic", 0.0)),
            )
        )
    return PointResult(
        mode=mode,
        concurrency=len(specs),
        instances=tuple(results),
        gpu=activity,
        workload=specs[0].describe(),
    )


def _collect(
    instances: Sequence[_Instance],
    events: queue.Queue[Any],
    tag: str,
    deadline: float,
    what: str,
    clock: Callable[[], float],
) -> None:
    """Wait until every instance has sent ``tag``; raise BenchError on ERROR, early exit or the deadline."""
    pending = {inst.index for inst in instances if _got(inst, tag) is None}
    while pending:
        remaining = deadline - clock()
        if remaining <= 0:
            names = ", ".join(instances[i].spec.label or f"instance {i}" for i in sorted(pending))
            raise BenchError(
                f"timed out {what}: no {tag} from {names}",
                hint="raise the timeout, or run one instance alone to see where it hangs",
            )
        try:
            index, got, payload = events.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        inst = instances[index]
        if got == "ERROR":
            raise _fail(inst, what, payload)
        if got == "EOF" and index in pending:
            raise _fail(inst, what, payload)
        if got == "READY":
            inst.ready = payload
        elif got == "RESULT":
            inst.result = payload
        if got == tag:
            pending.discard(index)


def _got(inst: _Instance, tag: str) -> dict[str, Any] | None:
    return inst.ready if tag == "READY" else inst.result
