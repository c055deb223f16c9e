"""``colo profile``: measure models (and agents' model sets) on a GPU and record them in the model database.

Each model runs in its own fresh child at its declared worst case; then every agent with more than one model
runs its set loaded together, as the agent would. Results become :class:`~colo.memory.db.ModelEntry` /
:class:`~colo.memory.db.AgentEntry` with provenance (GPU, driver, CUDA, torch, transformers, date, host,
whether under MPS). A failed child (out of memory, unknown model) is a failed row, not an exception.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ProfileError
from colo.gpu.mps.env import pipe_dir_of
from colo.gpu.nvml import GpuBackend
from colo.gpu.sampler import PEAK_INTERVAL_SECS, Sampler, nvml_read
from colo.memory.db import AgentEntry, ModelDB, ModelEntry, Provenance
from colo.memory.worst_case import WorstCase
from colo.profiling.protocol import ProfileRequest
from colo.profiling.spawn import DEFAULT_TIMEOUT_SECS, ChildOutcome, child_env, run_child


def utc_now(clock: Clock = SYSTEM_CLOCK) -> str:
    """``clock``'s wall time as ISO 8601 UTC, seconds."""
    return datetime.fromtimestamp(clock.wall(), UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Job:
    """One child to run: a single model (``agent`` None) or an agent's model set."""

    models: tuple[WorstCase, ...]
    agent: str | None = None

    @property
    def label(self) -> str:
        return f"agent {self.agent}" if self.agent else self.models[0].model


@dataclass(frozen=True)
class JobResult:
    """A job's outcome: the database entry written (None on failure) and the raw child outcome."""

    job: Job
    outcome: ChildOutcome | None
    model_entry: ModelEntry | None = None
    agent_entry: AgentEntry | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def provenance_for(
    backend: GpuBackend | None,
    outcome: ChildOutcome,
    *,
    clock: Clock = SYSTEM_CLOCK,
    env: Mapping[str, str] | None = None,
) -> Provenance:
    """Provenance of one child's numbers: the GPU it was seen on (NVML), driver/CUDA, the child's torch; dated
    by ``clock``'s wall time."""
    res = outcome.result
    return gpu_provenance(
        backend,
        outcome.sampler.gpu_uuid if outcome.sampler else "",
        clock=clock,
        env=env,
        gpu_name=res.device_name,
        cuda=res.cuda_version,
        torch=res.torch_version,
        transformers=res.transformers_version,
    )


def gpu_provenance(
    backend: GpuBackend | None,
    uuid: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    env: Mapping[str, str] | None = None,
    gpu_name: str = "",
    cuda: str = "",
    torch: str = "",
    transformers: str = "",
) -> Provenance:
    """Provenance of a measurement on the GPU ``uuid`` (NVML's name, driver and CUDA when ``backend`` answers;
    else the given ``gpu_name``/``cuda``); ``mps`` when ``env`` names an MPS pipe directory; ``date`` is
    ``clock``'s wall time."""
    driver = ""
    if backend is not None:
        try:
            snaps = backend.gpus()
            match = [g for g in snaps if g.uuid == uuid] or snaps[:1]
            if match:
                gpu_name, uuid = match[0].name, match[0].uuid
            driver = backend.driver_version()
            cuda = backend.cuda_version() or cuda
        except Exception:  # provenance is best effort; the measurement stands without it
            pass
    mps = pipe_dir_of(env or {}) is not None
    return Provenance(
        gpu=gpu_name,
        gpu_uuid=uuid,
        driver=driver,
        cuda=cuda,
        torch=torch,
        transformers=transformers,
        date=utc_now(clock),
        host=socket.gethostname(),
        mps=mps,
    )


def model_entry(req: WorstCase, outcome: ChildOutcome, prov: Provenance) -> ModelEntry:
    """The database entry for a single-model child. Raises ProfileError without an NVML peak."""
    res = outcome.result
    if outcome.nvml_peak_bytes is None:
        raise ProfileError(
            f"{req.model}: NVML never saw the profiling child (pid {res.pid})",
            hint="is the child on this machine's GPU, in this PID namespace? try `nvidia-smi`",
        )
    run = res.runs[0] if res.runs else None
    model, dtype, batch_size, seq_len, new_tokens = req.shape
    return ModelEntry(
        model,
        dtype,
        batch_size,
        seq_len,
        new_tokens,
        kind="measured",
        nvml_peak_bytes=outcome.nvml_peak_bytes,
        weights_bytes=res.weights_bytes,
        weights=run.weights if run else "random",
        context_bytes=outcome.context_bytes,
        allocated_peak_bytes=res.allocated_peak_bytes,
        reserved_peak_bytes=res.reserved_peak_bytes,
        overhead_bytes=outcome.nvml_peak_bytes - res.reserved_peak_bytes,
        samples=outcome.sampler.samples if outcome.sampler else 0,
        sample_hz=round(outcome.sampler.rate_hz, 1) if outcome.sampler else 0.0,
        provenance=prov,
    )


def agent_entry(agent: str, reqs: Sequence[WorstCase], outcome: ChildOutcome, prov: Provenance) -> AgentEntry:
    """The database entry for an agent's model set. Raises ProfileError without an NVML peak."""
    res = outcome.result
    if outcome.nvml_peak_bytes is None:
        raise ProfileError(f"agent {agent}: NVML never saw the profiling child (pid {res.pid})")
    return AgentEntry(
        agent=agent,
        models=tuple(r.shape for r in reqs),
        kind="measured",
        nvml_peak_bytes=outcome.nvml_peak_bytes,
        weights_bytes=res.weights_bytes,
        context_bytes=outcome.context_bytes,
        allocated_peak_bytes=res.allocated_peak_bytes,
        reserved_peak_bytes=res.reserved_peak_bytes,
        samples=outcome.sampler.samples if outcome.sampler else 0,
        sample_hz=round(outcome.sampler.rate_hz, 1) if outcome.sampler else 0.0,
        provenance=prov,
    )


class Profiler:
    """Runs jobs one child at a time on ``device`` and writes what they measured into ``db``.

    ``backend``: NVML (None only for CPU protocol runs, which write nothing to the database).
    ``env``: extra environment for every child (e.g. MPS variables); ``PYTHONPATH`` is passed through.
    ``clock``: times the children and their sampling, and dates the entries (its wall time).
    """

    def __init__(
        self,
        db: ModelDB,
        backend: GpuBackend | None,
        *,
        device: str = "cuda",
        env: Mapping[str, str] | None = None,
        timeout_secs: float = DEFAULT_TIMEOUT_SECS,
        interval_secs: float = PEAK_INTERVAL_SECS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.backend = backend
        self.device = device
        self.env = dict(env or {})
        self.timeout_secs = timeout_secs
        self.interval_secs = interval_secs
        self.clock = clock

    def _sampler(self, pid: int) -> Sampler:
        assert self.backend is not None
        return Sampler(
            nvml_read(self.backend, [pid]),
            interval_secs=self.interval_secs,
            clock=self.clock,
            name=f"colo-nvml-sampler-{pid}",
        )

    def run_job(self, job: Job, *, repeats: int = 1) -> JobResult:
        """Run one job in a fresh child and record it (database changed in memory; call ``db.save()``)."""
        request = ProfileRequest(models=job.models, device=self.device, handshake=True, repeats=repeats)
        env = child_env(self.env)
        try:
            outcome = run_child(
                request,
                sampler_factory=self._sampler if self.backend is not None else None,
                env=env,
                timeout_secs=self.timeout_secs,
                clock=self.clock,
            )
        except ProfileError as exc:
            return JobResult(job, None, error=str(exc))
        if not outcome.result.ok:
            return JobResult(job, outcome, error=f"{outcome.result.error_kind}: {outcome.result.error}")
        if self.backend is None:
            return JobResult(job, outcome)
        prov = provenance_for(self.backend, outcome, clock=self.clock, env=env)
        try:
            if job.agent is None:
                entry = model_entry(job.models[0], outcome, prov)
                self.db.put(entry)
                return JobResult(job, outcome, model_entry=entry)
            aentry = agent_entry(job.agent, job.models, outcome, prov)
            self.db.put_agent(aentry)
            return JobResult(job, outcome, agent_entry=aentry)
        except ProfileError as exc:
            return JobResult(job, outcome, error=str(exc))


def jobs_for(
    models: Mapping[str, WorstCase],
    agents: Mapping[str, Sequence[WorstCase]] | None = None,
) -> list[Job]:
    """One job per model, then one per agent with more than one model (single-model agents are covered by
    their model's own job)."""
    jobs = [Job((req,)) for req in models.values()]
    for name, reqs in (agents or {}).items():
        if len(reqs) > 1:
            jobs.append(Job(tuple(reqs), agent=name))
    return jobs
