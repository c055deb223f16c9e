"""``colo bench agents``: a config's agents through their HTTP APIs, as users reach them.

For each mode colo runs the config the way ``colo up`` does — the same command in a child process, with
``--no-mps`` for time-slicing, ``--mps on`` for MPS, ``--mps auto`` for what ``policy.mps: auto`` decides —
in a fresh state directory, waits until every agent is RUNNING, loads them
(:mod:`colo.bench.loads.agents`) at each client count, and stops them (``colo down``'s signal, then
:func:`~colo.supervise.statedir.stop_leftovers` for anything that outlived it). Attached, it loads agents
already running (any build: the URLs, or a config's ports) and starts nothing.

Each agent's memory is sampled through :mod:`colo.gpu.sampler` (NVML, by pid) over the whole load, warm-up
included, and compared with its limit from the state dir's store, which also says which GPU runs it (each
instance's ``info["gpu"]``). Results are :class:`BenchResult`s: a point per (mode, clients per agent), an
instance per agent; ``settings["lone"]`` holds each agent's lone-request latency per mode, ``settings["by_gpu"]``
each point's aggregate per GPU and their sum (:func:`colo.bench.agents_report.gpu_totals_of`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colo.bench.agents_report import gpu_totals_of
from colo.bench.harness import BenchError
from colo.bench.loads.agents import AgentLoad, AgentTarget, RequestShape, drive, drive_spread, wait_healthy
from colo.bench.modes import DEFAULT_MODES, Mode, label
from colo.bench.results import BenchResult, InstanceResult, PointResult
from colo.errors import ColoError, UsageError

if TYPE_CHECKING:
    from colo.gpu.nvml import GpuBackend
    from colo.spec.config import ColoConfig

Progress = Callable[[str], None]
#: How colo is started: the interpreter running this bench, the tree on its PYTHONPATH.
COLO_COMMAND: tuple[str, ...] = (sys.executable, "-c", "from colo.cli.entry import main; main()")
MEMORY_INTERVAL_SECS = 0.05
#: How ``colo up`` runs the config in each mode: ``mps`` on every GPU with an agent, ``auto`` as
#: ``policy.mps: auto`` decides (a GPU's lone agent time-sliced), ``timeslice`` without MPS.
UP_MODE_ARGS: dict[Mode, tuple[str, ...]] = {
    Mode.TIMESLICE: ("--no-mps",),
    Mode.MPS: ("--mps", "on"),
    Mode.AUTO: ("--mps", "auto"),
}
AGENT_MODES: tuple[Mode, ...] = tuple(UP_MODE_ARGS)
STOP_WAIT_SECS = 120.0


@dataclass(frozen=True)
class AgentsBench:
    """What to run: the targets (shapes per model), client counts, modes, window, and how to reach agents."""

    title: str
    config_path: Path | None
    targets: tuple[AgentTarget, ...]
    clients: tuple[int, ...] = (1, 3, 16)
    modes: tuple[Mode, ...] = DEFAULT_MODES
    window_secs: float = 15.0
    warmup_secs: float = 2.0
    lone_secs: float = 0.0
    attached: bool = False
    state_dir: Path | None = None  # attached: where the running orchestrator keeps its store (pids, limits)
    start_timeout_secs: float = 600.0
    gpu_index: int = 0
    processes: int = 1  # load-generator processes (the agents split among them)
    settings: dict[str, Any] = field(default_factory=dict)


def request_shapes(
    config: ColoConfig, agent: str, *, batch: int, seq_len: int, new_tokens: int
) -> tuple[RequestShape, ...]:
    """One shape per model of ``agent``: ``batch`` × ``seq_len`` clamped to the model's worst case; generators
    and seq2seq models also ``new_tokens`` (at most theirs)."""
    from colo.memory.worst_case import task_for

    shapes = []
    for model in config.agents[agent].models:
        spec = config.models.get(model)
        rows = min(batch, spec.batch_size) if spec else batch
        seq = min(seq_len, spec.max_seq_len) if spec else seq_len
        try:
            task = task_for(model, spec)
        except ColoError:
            task = "encoder"
        new = None if task == "encoder" else max(1, min(new_tokens, spec.new_tokens if spec else new_tokens))
        shapes.append(RequestShape(model, rows, seq, new))
    return tuple(shapes)


def config_targets(
    config: ColoConfig,
    *,
    batch: int,
    seq_len: int,
    new_tokens: int,
    only: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> tuple[AgentTarget, ...]:
    """Every agent of ``config`` (or those named in ``only``) at its built-in agent's port.

    Raises UsageError for a name in ``only`` that is not an agent of the config.
    """
    from colo.supervise.agent_setup import builtin_port

    unknown = sorted(set(only) - set(config.agents))
    if unknown:
        raise UsageError(f"--agents: no agent {', '.join(unknown)} in the config; it has {', '.join(config.agents)}")
    names = [n for n in sorted(config.agents) if not only or n in only]
    return tuple(
        AgentTarget(
            name,
            f"http://{host}:{builtin_port(config, name)}",
            request_shapes(config, name, batch=batch, seq_len=seq_len, new_tokens=new_tokens),
        )
        for name in names
    )


def url_targets(urls: Sequence[str], shapes: tuple[RequestShape, ...]) -> tuple[AgentTarget, ...]:
    """``--attach URL,...``: ``NAME=URL`` or a bare URL (named by its host:port), each sent ``shapes``.

    Raises UsageError for something that is not an http(s) URL.
    """
    out = []
    for raw in urls:
        name, _, url = raw.rpartition("=") if "=" in raw else ("", "", raw)
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--attach {raw!r}: give http://HOST:PORT or NAME=http://HOST:PORT")
        out.append(AgentTarget(name or url.split("://", 1)[1].rstrip("/"), url, shapes))
    return tuple(out)


def choose_targets(
    config: ColoConfig | None,
    *,
    attach: Sequence[str] = (),
    attach_config: bool = False,
    modes: Sequence[Mode] = DEFAULT_MODES,
    batch: int,
    seq_len: int,
    new_tokens: int,
    only: Sequence[str] = (),
) -> tuple[AgentTarget, ...]:
    """``colo bench agents``'s targets: the URLs of ``--attach`` (each sent ``batch`` × ``seq_len`` to its first
    model), else the agents of ``config`` (``only`` those, when named). Attached, colo starts nothing, so
    ``modes`` must be the one mode the running agents use. Raises UsageError for a combination that cannot run.
    """
    if attach and attach_config:
        raise UsageError("give --attach URLs or --attach-config, not both")
    if (attach or attach_config) and len(modes) != 1:
        raise UsageError(
            "attached, colo starts nothing: --mode names what the running agents use (one of timeslice, mps, auto)"
        )
    if attach:
        return url_targets(attach, (RequestShape(None, batch, seq_len),))
    if config is None:
        raise UsageError("give CONFIG (colo.yaml), or --attach URL,... for agents already running")
    return config_targets(config, batch=batch, seq_len=seq_len, new_tokens=new_tokens, only=only)


def load_processes(targets: int, cpus: int | None) -> int:
    """Load-generator processes by default: one per 4 CPUs, at most one per agent, at least one."""
    return max(1, min(targets, (cpus or 1) // 4))


def with_recorded(targets: Sequence[AgentTarget], state_dir: Path | None) -> tuple[AgentTarget, ...]:
    """The targets with their pid, limit and GPU from the store of ``state_dir`` (unchanged when it cannot be
    read: an older build's store, or none)."""
    if state_dir is None:
        return tuple(targets)
    from colo.supervise.statedir import recorded_state

    try:
        rec = recorded_state(state_dir, events=0)
    except (ColoError, OSError, ValueError, KeyError):
        return tuple(targets)
    if rec is None:
        return tuple(targets)
    by_name = {a.name: a for a in rec.agents}
    return tuple(
        replace(t, pid=by_name[t.name].pid, limit_bytes=by_name[t.name].limit_bytes or None, gpu=by_name[t.name].gpu)
        if t.name in by_name
        else t
        for t in targets
    )


# --- colo up, in a child process ------------------------------------------------------------------------------


@contextlib.contextmanager
def colo_up(
    config_path: Path,
    *,
    mode: Mode,
    names: Sequence[str],
    timeout_secs: float,
    progress: Progress,
    command: Sequence[str] = COLO_COMMAND,
    env: dict[str, str] | None = None,
) -> Iterator[Path]:
    """Run ``colo up CONFIG`` in ``mode`` (timeslice: ``--no-mps``; mps: ``--mps on``; auto: ``--mps auto``,
    MPS only where the plan puts 2+ agents on a GPU) in a child process with a fresh state dir, wait
    until the agents ``names`` are RUNNING, yield the state dir; stop everything on the way out, whatever
    happened. Raises BenchError when colo exits, an agent turns FATAL, or the wait times out."""
    from colo.supervise.statedir import stop_leftovers

    sd = Path(tempfile.mkdtemp(prefix="colo-agents-bench-"))
    log_path = sd / "up.log"
    argv = [*command, "up", str(config_path), "--state-dir", str(sd), "--no-api", "--force", *UP_MODE_ARGS[mode]]
    progress(f"{label(mode)}: colo up (state dir {sd})")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ok = False
    try:
        _wait_running(proc, sd, names, timeout_secs, log_path, progress)
        yield sd
        ok = True
    finally:
        progress("stopping the agents (colo down)")
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_WAIT_SECS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10.0)
        with contextlib.suppress(ColoError, OSError):
            stop_leftovers(sd)
        if ok:  # a failed run keeps its state dir: up.log and the agents' logs say why
            shutil.rmtree(sd, ignore_errors=True)
        else:
            progress(f"colo up's state dir (logs) kept: {sd}")


def _wait_running(
    proc: subprocess.Popen[bytes], sd: Path, names: Sequence[str], timeout_secs: float, log: Path, progress: Progress
) -> None:
    from colo.supervise.state import AgentState
    from colo.supervise.statedir import recorded_state

    deadline = time.monotonic() + timeout_secs
    last = ""
    while True:
        if proc.poll() is not None:
            raise BenchError(f"colo up exited with status {proc.returncode}; its output ends:\n{_tail(log)}")
        with contextlib.suppress(ColoError, OSError):
            rec = recorded_state(sd, events=0)
            states = {a.name: a for a in rec.agents} if rec else {}
            fatal = [a for a in states.values() if a.name in names and a.state is AgentState.FATAL]
            if fatal:
                a = fatal[0]
                raise BenchError(f"agent {a.name} is FATAL: {a.last_error}; colo up's output ends:\n{_tail(log)}")
            ready = [n for n in names if n in states and states[n].state is AgentState.RUNNING]
            line = f"{len(ready)}/{len(names)} agents RUNNING"
            if line != last:
                progress(line)
                last = line
            if len(ready) == len(names):
                return
        if time.monotonic() > deadline:
            raise BenchError(f"the agents were not all RUNNING after {timeout_secs:g} s ({last}):\n{_tail(log)}")
        time.sleep(0.5)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- measuring ---------------------------------------------------------------------------------------------------


def measure(
    targets: Sequence[AgentTarget],
    clients: int,
    bench: AgentsBench,
    backend: GpuBackend | None,
    *,
    mode: Mode,
    transport: Any = None,
) -> PointResult:
    """One point: every target with ``clients`` clients, memory sampled by pid; the load generator's CPU."""
    from colo.gpu.sampler import Sampler, nvml_read

    pids = [t.pid for t in targets if t.pid]
    sampler = None
    if backend is not None and pids:
        sampler = Sampler(nvml_read(backend, pids), interval_secs=MEMORY_INTERVAL_SECS, name="colo-bench-memory")
        sampler.start()
    try:
        done = drive_spread(
            targets,
            clients,
            bench.window_secs,
            warmup_secs=bench.warmup_secs,
            processes=bench.processes,
            transport=transport,
        )
    finally:
        samples = sampler.stop() if sampler is not None else None
    loads, wall, cpu = done.loads, done.wall_secs, done.cpu_secs
    if samples is not None:
        loads = [replace(ld, peak_memory_bytes=samples.peak(ld.pid).peak_bytes if ld.pid else None) for ld in loads]
    load = {
        "wall_secs": wall,
        "cpu_secs": cpu,
        "cpu_cores_used": cpu / wall if wall > 0 else 0.0,
        "max_process_cores": done.max_process_cores,
        "processes": float(done.processes),
        "host_cpus": float(os.cpu_count() or 0),
        "memory_samples": float(len(samples.samples)) if samples else 0.0,
    }
    gpu_of = {t.name: t.gpu for t in targets}
    return PointResult(
        mode,
        clients,
        tuple(_instance(i, ld, gpu_of.get(ld.name)) for i, ld in enumerate(loads)),
        workload="agents",
        load=load,
    )


def _instance(index: int, ld: AgentLoad, gpu: str | None = None) -> InstanceResult:
    from colo.bench import stats

    return InstanceResult(
        index=index,
        label=ld.name,
        pid=ld.pid or 0,
        unit="seq",
        items=float(ld.sequences),
        elapsed_secs=ld.elapsed_secs,
        latencies_secs=ld.latencies_secs,
        info={
            "url": ld.url,
            "clients": ld.clients,
            "requests": ld.requests,  # kept when the JSON report drops the latency list
            "latency": stats.summarize_latencies(ld.latencies_secs).to_dict(),
            "errors": dict(ld.errors),
            "hard_errors": ld.hard_errors,
            "retry_after_503": ld.retry_after,
            "limit_bytes": ld.limit_bytes,
            "peak_memory_bytes": ld.peak_memory_bytes,
            "within_limit": ld.within_limit,
            "last_error": ld.last_error,
            "gpu": gpu,  # GpuSlot.key from colo's store; None when not known (bare --attach URLs)
        },
    )


def lone_latency(
    targets: Sequence[AgentTarget], secs: float, *, transport: Any = None
) -> dict[str, dict[str, float | int | None]]:
    """Each agent alone, one client, one row per request (the batching wait cannot be filled by others):
    p50/p99 of its latency, by agent."""
    from colo.bench import stats

    out: dict[str, dict[str, float | int | None]] = {}
    for t in targets:
        single = replace(t, shapes=tuple(replace(s, rows=1) for s in t.shapes))
        (ld,), _, _ = drive([single], 1, secs, warmup_secs=min(0.5, secs), transport=transport)
        lat = stats.summarize_latencies(ld.latencies_secs)
        out[t.name] = {
            "requests": lat.count,
            "p50_secs": stats.finite(lat.p50_secs),
            "p99_secs": stats.finite(lat.p99_secs),
            "errors": ld.hard_errors,
        }
    return out


def run_agents_bench(
    bench: AgentsBench,
    *,
    backend: GpuBackend | None,
    progress: Progress = lambda _msg: None,
    on_point: Callable[[PointResult], None] | None = None,
    on_result: Callable[[BenchResult], None] | None = None,
    command: Sequence[str] = COLO_COMMAND,
    transport: Any = None,
) -> BenchResult:
    """Every mode × client count of ``bench``; ``on_result`` gets the result so far after each point (a run
    cut short keeps its points). Raises BenchError (colo up failed, agents not healthy)."""
    from colo.bench.run import machine_facts

    points: list[PointResult] = []
    lone: dict[str, Any] = {}
    machine = machine_facts(backend, bench.gpu_index)
    created = datetime.now(UTC).isoformat(timespec="seconds")

    def result() -> BenchResult:
        settings = {
            **bench.settings,
            "duration_secs": bench.window_secs,
            "warmup_secs": bench.warmup_secs,
            "clients": list(bench.clients),
            "attached": bench.attached,
            "shapes": {t.name: [s.to_dict() for s in t.shapes] for t in bench.targets},
            "lone": dict(lone),
            "by_gpu": gpu_totals_of(points),
        }
        return BenchResult(bench.title, "agents", tuple(points), machine=machine, settings=settings, created=created)

    def run_points(targets: Sequence[AgentTarget], mode: Mode) -> None:
        for n in bench.clients:
            progress(f"{mode}: {n} client(s) per agent, {bench.window_secs:g} s")
            point = measure(targets, n, bench, backend, mode=mode, transport=transport)
            points.append(point)
            if on_point:
                on_point(point)
            if on_result:
                on_result(result())
        if bench.lone_secs > 0:
            progress(f"{mode}: each agent alone, one request at a time")
            lone[mode] = lone_latency(targets, bench.lone_secs, transport=transport)
            if on_result:
                on_result(result())

    names = [t.name for t in bench.targets]
    for mode in bench.modes:
        if bench.attached:
            missing = wait_healthy(bench.targets, bench.start_timeout_secs, transport=transport)
            if missing:
                raise BenchError(f"agents not healthy after {bench.start_timeout_secs:g} s: {', '.join(missing)}")
            run_points(with_recorded(bench.targets, bench.state_dir), mode)
            continue
        if bench.config_path is None:
            raise UsageError("colo bench agents needs a config to start agents (or --attach)")
        with colo_up(
            bench.config_path,
            mode=mode,
            names=names,
            timeout_secs=bench.start_timeout_secs,
            progress=progress,
            command=command,
        ) as sd:
            missing = wait_healthy(bench.targets, 60.0, transport=transport)
            if missing:
                raise BenchError(f"RUNNING but /health does not answer 200: {', '.join(missing)}")
            run_points(with_recorded(bench.targets, sd), mode)
    return result()
