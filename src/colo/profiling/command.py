"""Profiling a command agent (e.g. ``llama-server``): start it alone, load it, record its NVML peak.

An agent with a ``command`` and a ``profile:`` block in colo.yaml is measured as it will run: its own
process (and any children) on the profiling GPU, under MPS when a daemon is given (``env``), with no limit.

1. start it through the supervisor's :class:`~colo.launch.runner.Runner` (own session, log file);
2. sample the NVML memory of its process tree from the start (loading weights is part of the peak);
3. wait for its health check (the supervisor's probe) — a process that exits first is a failed row;
4. drive it with the ``profile:`` load: ``concurrency`` clients sending ``method path body`` back to back,
   ``requests`` in all or for ``duration_secs``;
5. stop it (its stop signal, then SIGKILL), and record the peak as an
   :class:`~colo.memory.db.AgentEntry` (``command`` says what ran, ``provenance`` where), which
   ``colo plan --from-db`` / ``memory_source: db`` then size its limit from.

Everything outside (processes, probes, NVML, HTTP, the clock) is injected, so tests run it on CPU with a fake
NVML backend and a tiny HTTP server.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ProfileError
from colo.gpu import procs
from colo.gpu.nvml import GpuBackend
from colo.gpu.sampler import PEAK_INTERVAL_SECS, PeakStats, Read, Sample, Sampler, nvml_read
from colo.launch.health import HealthChecker, Probe
from colo.launch.runner import LaunchSpec, ProcessHandle, ProcessRunner, Runner
from colo.memory.db import AgentEntry, ModelDB
from colo.memory.worst_case import WorstCase, agent_requests
from colo.profiling.profiler import Job, JobResult, gpu_provenance
from colo.spec.config import ColoConfig, HealthCheck, ProfileLoad

#: The NVML sampling interval for command agents: their peak lasts seconds (weights, KV cache), not ms.
COMMAND_INTERVAL_SECS = max(PEAK_INTERVAL_SECS, 0.02)

#: A reading of the process tree under a root pid (given once the agent is spawned).
TreeReader = Callable[[int], Read]


@dataclass(frozen=True)
class CommandAgent:
    """One command agent to profile: what to start, how to know it is ready, how to load it."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    health: HealthCheck
    load: ProfileLoad
    base_url: str
    models: tuple[WorstCase, ...]
    stop_signal: int = signal.SIGTERM
    stop_wait_secs: float = 10.0

    def describe(self) -> str:
        """``llama-server -m … ; load POST /v1/chat/completions, 2 clients, 8 requests``."""
        load = self.load
        amount = f"{load.duration_secs:g} s" if load.duration_secs else f"{requests_of(load)} requests"
        return f"{' '.join(self.argv)[:300]}; load {load.method} {load.path}, {load.concurrency} client(s), {amount}"


def requests_of(load: ProfileLoad) -> int:
    """Requests in all when the load is counted (default: two per client)."""
    return load.requests if load.requests is not None else 2 * load.concurrency


def command_agents(config: ColoConfig) -> dict[str, CommandAgent]:
    """The config's agents with a ``command`` and a ``profile:`` block, by name."""
    out = {}
    for name, spec in config.agents.items():
        if spec.command is None or spec.profile is None:
            continue
        base = spec.profile.url or f"http://127.0.0.1:{spec.port}"
        out[name] = CommandAgent(
            name=name,
            argv=tuple(spec.command),
            env={"COLO_AGENT": name, **spec.env},
            cwd=spec.cwd,
            health=spec.health,
            load=spec.profile,
            base_url=base.rstrip("/"),
            models=agent_requests(config, name),
            stop_signal=int(getattr(signal, f"SIG{spec.restart.stop_signal}")),
            stop_wait_secs=spec.restart.stop_wait_secs,
        )
    return out


def models_only_in_command_agents(config: ColoConfig) -> set[str]:
    """Models that only profiled command agents use: colo's own child cannot load them (e.g. a GGUF)."""
    profiled = set(command_agents(config))
    others = {m for name, a in config.agents.items() if name not in profiled for m in a.models}
    return {m for name in profiled for m in config.agents[name].models} - others


def tree_reader(backend: GpuBackend) -> TreeReader:
    """A reading of NVML's used memory summed over a root pid and its descendants, filed under the root
    (a wrapper script's server child counts): ``nvidia-smi --query-compute-apps=pid,used_memory`` for the
    whole tree, its members looked up again at every reading (children come and go)."""

    def for_root(pid: int) -> Read:
        def read(t_secs: float) -> Sample | None:
            sample = nvml_read(backend, [pid, *procs.descendants(pid)])(t_secs)
            if sample is None or not sample.process_gpu_uuid:
                return Sample(t_secs)
            uuid = sample.process_gpu_uuid.get(pid) or next(iter(sample.process_gpu_uuid.values()))
            used = sample.process_memory_bytes
            return Sample(t_secs, {pid: sum(used.values())} if used else {}, {pid: uuid})

        return read

    return for_root


@dataclass(frozen=True)
class LoadOutcome:
    """What the load did: requests answered 2xx, failed ones (first error kept), seconds."""

    ok: int
    failed: int
    seconds: float
    first_error: str = ""


def drive_load(load: ProfileLoad, base_url: str, *, timeout_secs: float = 600.0) -> LoadOutcome:
    """``load.concurrency`` threads sending the request back to back until the count or the time is spent."""
    import httpx

    url = base_url + load.path
    deadline = time.monotonic() + load.duration_secs if load.duration_secs else None
    budget = [requests_of(load)]
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def take() -> bool:
        with lock:
            if deadline is not None:
                return time.monotonic() < deadline
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            return True

    def client() -> None:
        with httpx.Client(timeout=timeout_secs) as http:
            while take():
                try:
                    resp = http.request(load.method, url, json=load.body)
                    good = resp.status_code < 400
                    detail = f"{load.method} {url} answered {resp.status_code}: {resp.text[:200]}"
                except httpx.HTTPError as exc:
                    good, detail = False, f"{load.method} {url}: {exc}"
                with lock:
                    counts["ok" if good else "failed"] += 1
                    if not good and not errors:
                        errors.append(detail)

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(load.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadOutcome(counts["ok"], counts["failed"], time.monotonic() - start, errors[0] if errors else "")


@dataclass(frozen=True)
class CommandRun:
    """One command agent's profiling run: its pid, what NVML sampled of its process tree (``peak.peak_bytes``
    None if it never saw it), seconds until it was healthy, and the load's outcome."""

    pid: int
    peak: PeakStats
    ready_secs: float
    load: LoadOutcome


@dataclass(frozen=True)
class CommandRunOptions:
    """How :func:`run_command_agent` runs an agent: extra environment (its ``CUDA_VISIBLE_DEVICES`` names the
    GPU), the process runner and health probe (None: the real ones), the load driver, the NVML sampling
    interval and the health poll (seconds), and the clock it waits on and dates the measurement by."""

    env: Mapping[str, str] | None = None
    runner: Runner | None = None
    probe: Probe | None = None
    drive: Callable[[ProfileLoad, str], LoadOutcome] = drive_load
    interval_secs: float = COMMAND_INTERVAL_SECS
    poll_secs: float = 0.5
    clock: Clock = SYSTEM_CLOCK


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def run_command_agent(
    agent: CommandAgent,
    *,
    reader: TreeReader,
    log_path: Path,
    options: CommandRunOptions | None = None,
) -> CommandRun:
    """Start, wait for health, load, stop; the NVML peak of the process tree throughout (waits and times
    on the options' clock).

    Raises ProfileError when it cannot start, exits or never gets healthy, or every load request fails.
    """
    options = options or CommandRunOptions()
    env, clock = options.env, options.clock
    runner = options.runner or ProcessRunner()
    probe = options.probe or HealthChecker()
    spec = LaunchSpec(
        argv=agent.argv,
        env=tuple(sorted({**(env or {}), **agent.env}.items())),
        cwd=agent.cwd,
        gpu=None,
        gpu_uuid=(env or {}).get("CUDA_VISIBLE_DEVICES"),
        limit_bytes=0,
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = runner.spawn(spec, log_path)
    stop_sampling = _sample_peak(reader, handle.pid, options.interval_secs, clock)
    started = clock.monotonic()
    try:
        _wait_healthy(agent, handle, runner, probe, log_path, started, options.poll_secs, clock)
        ready = clock.monotonic() - started
        outcome = options.drive(agent.load, agent.base_url)
        if outcome.ok == 0:
            raise ProfileError(f"agent {agent.name}: no load request succeeded ({outcome.first_error})")
    finally:
        peak = stop_sampling()
        _stop(agent, handle, runner, clock)
    return CommandRun(pid=handle.pid, peak=peak, ready_secs=ready, load=outcome)


def _sample_peak(reader: TreeReader, pid: int, interval_secs: float, clock: Clock) -> Callable[[], PeakStats]:
    """Start sampling the tree under ``pid`` through ``reader`` (colo's one NVML sampling loop, on its
    background thread); returns the function that stops it and gives the peak."""
    sampler = Sampler(reader(pid), interval_secs=interval_secs, clock=clock, name=f"colo-profile-{pid}").start()

    def stop() -> PeakStats:
        return sampler.stop().peak(pid)

    return stop


def _wait_healthy(
    agent: CommandAgent,
    handle: ProcessHandle,
    runner: Runner,
    probe: Probe,
    log_path: Path,
    started: float,
    poll_secs: float,
    clock: Clock,
) -> None:
    check = agent.health
    timeout = check.startup_timeout_secs
    last = "not probed yet"
    while True:
        status = runner.poll(handle)
        if status is not None:
            raise ProfileError(
                f"agent {agent.name} ended before it was healthy ({status.describe()}); log {log_path}: "
                + (_tail(log_path) or "(empty)")
            )
        if check.type == "none":
            if clock.monotonic() - started >= check.start_secs:
                return
        else:
            result = probe(check)
            if result.ok:
                return
            last = result.detail
        if clock.monotonic() - started > timeout:
            raise ProfileError(
                f"agent {agent.name} was not healthy after {timeout:g} s ({last}); log {log_path}",
                hint="raise health.startup_timeout_secs, or check the agent's command and port",
            )
        clock.sleep(poll_secs)


def _stop(agent: CommandAgent, handle: ProcessHandle, runner: Runner, clock: Clock) -> None:
    runner.signal(handle, agent.stop_signal)
    deadline = clock.monotonic() + agent.stop_wait_secs
    while runner.poll(handle) is None:
        if clock.monotonic() > deadline:
            runner.signal(handle, signal.SIGKILL)
            deadline = clock.monotonic() + 5.0
            while runner.poll(handle) is None and clock.monotonic() < deadline:
                clock.sleep(0.05)
            return
        clock.sleep(0.05)


def profile_command_agent(
    agent: CommandAgent,
    db: ModelDB,
    backend: GpuBackend,
    *,
    log_dir: Path,
    options: CommandRunOptions | None = None,
) -> JobResult:
    """Measure ``agent`` and record its :class:`AgentEntry` in ``db`` (in memory; call ``db.save()``), dated
    by the options' clock. A failure is a failed :class:`JobResult`, not an exception."""
    options = options or CommandRunOptions()
    job = Job(agent.models, agent=agent.name)
    try:
        run = run_command_agent(
            agent, reader=tree_reader(backend), log_path=log_dir / f"profile-{agent.name}.log", options=options
        )
    except ProfileError as exc:
        return JobResult(job, None, error=str(exc))
    if run.peak.peak_bytes is None:
        return JobResult(
            job,
            None,
            error=f"agent {agent.name}: NVML never saw its processes (pid {run.pid}); is it on this GPU?",
        )
    prov = gpu_provenance(backend, run.peak.gpu_uuid, clock=options.clock, env=options.env)
    entry = AgentEntry(
        agent=agent.name,
        models=tuple(m.shape for m in agent.models),
        kind="measured",
        nvml_peak_bytes=run.peak.peak_bytes,
        weights_bytes=0,
        samples=run.peak.samples,
        sample_hz=round(run.peak.rate_hz, 1),
        provenance=prov,
        command=agent.describe(),
    )
    db.put_agent(entry)
    return JobResult(job, None, agent_entry=entry)
