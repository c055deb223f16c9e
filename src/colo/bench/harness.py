"""Run N benchmark instances together: separate processes, a start barrier, a fixed timed window.

The harness starts one ``python -m colo.bench.instance`` process per :class:`InstanceSpec`, waits until
every one has loaded, warmed up and captured its workload (``READY``), starts the GPU sampler, sends ``GO``
to all at once, and collects each instance's ``RESULT`` (items, elapsed seconds, per-request latencies).
An :class:`InstanceGroup` keeps its processes between windows, so N = 1, 2, 4, 8 of one mode run on the same
eight loaded processes (the ones not in a window sit idle). Any instance that fails, or a timeout, stops every instance of the point and raises
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import colo
from colo.bench.activity import ActivityWatch, GpuActivity
from colo.bench.instance import PREFIX
from colo.bench.modes import Mode
from colo.bench.results import InstanceResult, PointResult
from colo.bench.spec import InstanceSpec
from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError


class BenchError(ColoError):
    """A benchmark instance failed or did not answer in time."""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) so ``finally`` blocks stop instances and quit MPS
    daemons (a plain SIGTERM would end the process without them). Main thread only; restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    env["COLO_BENCH_PARENT_PID"] = str(os.getpid())
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
        self.exit_payload: dict[str, Any] | None = None  # set when its stdout closed (the process ended)
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

    def close_stdin(self) -> None:
        """EOF on its stdin: an idle instance exits; a running one exits after its window."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def stop(self, wait_secs: float) -> None:
        """Close its stdin, let it exit on its own for ``wait_secs``, then SIGTERM, then SIGKILL its process
        group."""
        self.close_stdin()
        try:
            self.proc.wait(timeout=max(wait_secs, 0.0))
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


class InstanceGroup:
    """Instance processes started once, then run together any number of times (a context manager).

    ``start()`` spawns one process per spec and waits for every READY; ``run(count)`` sends GO to the first
    ``count`` instances and collects their RESULTs — the others stay idle (loaded, no GPU work), so one
    group serves every concurrency level of a mode without reloading models. Leaving the ``with`` block
    stops every process (stdin closed, then SIGTERM / SIGKILL of its process group).

    ``env`` is the environment every instance starts from (default: this process's), e.g. with the MPS pipe
    directory set. ``ready_timeout_secs`` bounds loading + warm-up; ``result_grace_secs`` is how long past the
    timed window a last request may take. ``progress`` gets messages labelled ``name``.
    """

    def __init__(
        self,
        specs: Sequence[InstanceSpec],
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout_secs: float = 900.0,
        result_grace_secs: float = 120.0,
        progress: Progress | None = None,
        name: str = "instances",
        python: str = sys.executable,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not specs:
            raise BenchError("no instances to run")
        self.specs = list(specs)
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout_secs = ready_timeout_secs
        self.result_grace_secs = result_grace_secs
        self.say = progress or (lambda _msg: None)
        self.name = name
        self.python = python
        self.clock: Clock = clock
        self._events: queue.Queue[Any] = queue.Queue()
        self._instances: list[_Instance] = []
        self._idle_exits: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> InstanceGroup:
        try:
            self.start()
        except BaseException:
            self.close(aborting=True)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close(aborting=exc_type is not None)

    def start(self) -> None:
        """Spawn the processes and wait until every one is READY. Raises BenchError."""
        for i, spec in enumerate(self.specs):
            self._instances.append(_Instance(i, spec, self.env, self.python, self._events))
        self.say(f"{self.name}: loading and warming up")
        deadline = self.clock.monotonic() + self.ready_timeout_secs
        _collect(self._instances, self._events, self._idle_exits, "READY", deadline, "while loading", self.clock)

    def run(
        self, count: int, *, sampler: ActivityWatch | None = None, label: str | None = None
    ) -> tuple[list[InstanceResult], GpuActivity | None]:
        """One timed window of the first ``count`` instances together; their results and GPU activity."""
        chosen = self._instances[:count]
        _drain(self._instances, self._events, self._idle_exits)
        for inst in chosen:
            if inst.exit_payload is not None:
                raise _fail(inst, "while idle", inst.exit_payload)
            inst.result = None
        activity = None
        if sampler is not None:
            sampler.start([inst.proc.pid for inst in chosen])
        try:
            for inst in chosen:
                inst.send("GO")
            self.say(f"{label or self.name}: running")
            window = max(inst.spec.duration_secs for inst in chosen)
            deadline = self.clock.monotonic() + window + self.result_grace_secs
            _collect(chosen, self._events, self._idle_exits, "RESULT", deadline, "while running", self.clock)
        finally:
            if sampler is not None:
                activity = sampler.stop()
        return [_instance_result(inst) for inst in chosen], activity

    def close(self, *, aborting: bool = False) -> None:
        """Stop every process of the group: EOF to all at once, then up to 10 s for them to exit on their own
        (1 s when aborting: instances may be mid-window), then SIGTERM / SIGKILL."""
        for inst in self._instances:
            inst.close_stdin()
        deadline = self.clock.monotonic() + (1.0 if aborting else 10.0)
        for inst in self._instances:
            inst.stop(wait_secs=deadline - self.clock.monotonic())
        self._instances = []


def _instance_result(inst: _Instance) -> InstanceResult:
    assert inst.ready is not None and inst.result is not None
    res = inst.result
    return InstanceResult(
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


def run_point(
    specs: Sequence[InstanceSpec],
    *,
    mode: Mode,
    sampler: ActivityWatch | None = None,
    name: str | None = None,
    **group: Any,
) -> PointResult:
    """Start ``specs`` (one process each), run them together once, stop them; return the point.

    ``name`` labels progress messages (default ``"<mode> N=<count>"``); ``group``: the rest of
    :class:`InstanceGroup`'s options (``env``, ``ready_timeout_secs``, ``result_grace_secs``, ``progress``,
    ``python``, ``clock``). Raises BenchError (every instance stopped) on any failure.
    """
    with InstanceGroup(specs, name=name or f"{mode} N={len(specs)}", **group) as running:
        results, activity = running.run(len(specs), sampler=sampler)
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
    idle_exits: dict[int, dict[str, Any]],
    tag: str,
    deadline: float,
    what: str,
    clock: Clock,
) -> None:
    """Wait until every one of ``instances`` has sent ``tag``; raise BenchError on an ERROR, an early exit or
    the deadline. Events of other instances (of the same group, idle) are noted, not waited for."""
    by_index = {inst.index: inst for inst in instances}
    pending = {inst.index for inst in instances if _got(inst, tag) is None}
    while pending:
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            names = ", ".join(by_index[i].spec.label or f"instance {i}" for i in sorted(pending))
            raise BenchError(
                f"timed out {what}: no {tag} from {names}",
                hint="raise the timeout, or run one instance alone to see where it hangs",
            )
        try:
            index, got, payload = events.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        inst = by_index.get(index)
        if inst is None:
            if got == "EOF":
                idle_exits[index] = payload
            continue
        if got == "EOF":
            inst.exit_payload = payload
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


def _drain(instances: Sequence[_Instance], events: queue.Queue[Any], idle_exits: dict[int, dict[str, Any]]) -> None:
    """Note instances that ended while idle (their EOF arrived when no one was waiting for them)."""
    while True:
        try:
            index, got, payload = events.get_nowait()
        except queue.Empty:
            break
        if got == "EOF":
            idle_exits[index] = payload
    for inst in instances:
        if inst.index in idle_exits:
            inst.exit_payload = idle_exits[inst.index]


def _got(inst: _Instance, tag: str) -> dict[str, Any] | None:
    return inst.ready if tag == "READY" else inst.result
