"""The invariant: every agent is what its plan says — an MPS client of its GPU's server, or time-sliced.

A CUDA client whose ``CUDA_MPS_PIPE_DIRECTORY`` has no answering control daemon does not fail: it silently
runs as an ordinary context (nvidia-smi type ``C``, absent from NVML's MPS process list) and its
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` is not enforced (docs/mps.md, seen on the lent H100 after a sequence of
MPS faults). So colo looks, at every GPU reading, at each agent's processes in NVML's lists
(``nvmlDeviceGetComputeRunningProcesses`` and ``nvmlDeviceGetMPSComputeRunningProcesses``, merged by
:func:`colo.gpu.nvml.merge_process_lists`):

- an agent none of whose processes is listed has no CUDA context yet (still importing, loading) or never
  uses CUDA: its membership is unknown (``mps_client: null``) and nothing is judged;
- listed: ``mps_client`` is true when every listed process of it is an MPS client;
- it *differs* when the plan says MPS and it is not a client, or the plan says time-sliced and it is one.

An agent that differs on :data:`MISMATCH_READINGS` readings in a row (one reading can catch a process between
NVML's two lists) is taken out of RUNNING by the supervisor: an ``mps_fault`` event naming it and what
differs, then a ``not_as_planned`` recovery of that agent (its GPU's daemon restored first when it does not
answer, then the agent relaunched).

**Bounded** (:class:`OutsidePlan`): an agent found outside its plan :data:`OUTSIDE_PLAN_FINDINGS` times within
:data:`OUTSIDE_PLAN_WINDOW_SECS` is not relaunched again but made FATAL, with one ``fatal`` event naming it,
what differed each time, and what to check. Meanwhile it is never RUNNING: once found, it stays STARTING after
each relaunch until a GPU reading lists it as its plan says (the supervisor's ready gate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from colo.gpu.mps.env import PIPE_DIRECTORY

#: Readings in a row on which an agent must differ from its plan before colo acts.
MISMATCH_READINGS = 2
#: An agent found outside its plan this many times within :data:`OUTSIDE_PLAN_WINDOW_SECS` is made FATAL. The
#: first can be a moment without a daemon; the second comes after a recovery that checked (and if need be
#: restored) that daemon; a third means the cause is the agent's own environment, which no relaunch changes.
OUTSIDE_PLAN_FINDINGS = 3
#: The window (seconds) those findings must fall in: a relaunch that takes 20 s fits many times over.
OUTSIDE_PLAN_WINDOW_SECS = 600.0

#: pid -> (GPU UUID, listed as an MPS client): the compute processes of one GPU reading.
GpuProcesses = Mapping[int, tuple[str, bool]]


@dataclass(frozen=True)
class Membership:
    """One agent against its plan at one reading. ``mps_client`` None: none of its processes is listed (no
    CUDA context yet)."""

    agent: str
    gpu_uuid: str | None
    planned_mps: bool
    mps_client: bool | None

    @property
    def differs(self) -> bool:
        return self.mps_client is not None and self.mps_client != self.planned_mps

    def detail(self) -> str:
        """What differs, for a person: the event's text."""
        where = self.gpu_uuid or "its GPU"
        if self.planned_mps:
            return (
                f"{self.agent} runs as a plain CUDA context (nvidia-smi type C), not as a client of the MPS server "
                f"of {where} as its plan says: its MPS memory limit and SM share are not enforced"
            )
        return f"{self.agent} is an MPS client (nvidia-smi type M+C) on {where}, but its plan says time-sliced"

    def short(self) -> str:
        """What differs, in a few words (one finding in a give-up event)."""
        if self.planned_mps:
            return "a plain CUDA context (type C), planned an MPS client"
        return "an MPS client (type M+C), planned time-sliced"


def judge(agent: str, gpu_uuid: str | None, planned_mps: bool, pids: Sequence[int], listed: GpuProcesses) -> Membership:
    """``agent`` (its process and descendants ``pids``) against its plan in one reading's ``listed``."""
    rows = [listed[p][1] for p in pids if p in listed]
    return Membership(agent, gpu_uuid, planned_mps, all(rows) if rows else None)


class MembershipWatch:
    """Counts, per agent, the readings in a row on which it differed from its plan."""

    def __init__(self) -> None:
        self._misses: dict[str, int] = {}

    def note(self, m: Membership) -> bool:
        """Record one reading's verdict; True when the agent has now differed :data:`MISMATCH_READINGS`
        readings in a row (then the count starts again)."""
        if not m.differs:
            self._misses.pop(m.agent, None)
            return False
        self._misses[m.agent] = self._misses.get(m.agent, 0) + 1
        if self._misses[m.agent] >= MISMATCH_READINGS:
            del self._misses[m.agent]
            return True
        return False

    def forget(self, agent: str) -> None:
        """The agent's process ended (or it is being recovered): its count starts again."""
        self._misses.pop(agent, None)


@dataclass(frozen=True)
class Finding:
    """One life of an agent found outside its plan: when (monotonic seconds), its pid, what differed."""

    at: float
    pid: int
    what: str


class OutsidePlan:
    """Per agent, its findings within :data:`OUTSIDE_PLAN_WINDOW_SECS`, and the agents found and not yet seen
    as planned since (``suspects``: the supervisor does not let them be RUNNING until a reading confirms them)."""

    def __init__(self) -> None:
        self.suspects: set[str] = set()
        self._found: dict[str, list[Finding]] = {}

    def note(self, agent: str, finding: Finding) -> list[Finding] | None:
        """Record one finding: the findings in the window once they reach :data:`OUTSIDE_PLAN_FINDINGS` (then
        forgotten: a start by hand begins a fresh count), else None."""
        self.suspects.add(agent)
        kept = [f for f in self._found.get(agent, []) if finding.at - f.at < OUTSIDE_PLAN_WINDOW_SECS]
        kept.append(finding)
        if len(kept) >= OUTSIDE_PLAN_FINDINGS:
            self._found.pop(agent, None)
            return kept
        self._found[agent] = kept
        return None

    def confirmed(self, agent: str) -> None:
        """A reading listed the agent as its plan says: no longer a suspect (its findings stay counted)."""
        self.suspects.discard(agent)

    def forget(self, agent: str) -> None:
        """The agent left the plan."""
        self.suspects.discard(agent)
        self._found.pop(agent, None)


def outside_plan_verdict(m: Membership, findings: Sequence[Finding], pipe_dir: str | None) -> str:
    """The ``fatal`` event (and ``last_error``) of an agent found outside its plan too often: each finding, and
    what a person checks before starting it again."""
    first = findings[0].at
    each = "; ".join(f"pid {f.pid} at +{f.at - first:.1f} s: {f.what}" for f in findings)
    name = m.agent
    if m.planned_mps:
        check = (
            f"that the MPS daemon of {m.gpu_uuid or 'its GPU'} answers (`colo mps status`; {PIPE_DIRECTORY}="
            f"{pipe_dir or '?'}), that its command keeps the {PIPE_DIRECTORY} colo sets (`colo mps env {name}"
            " -c CONFIG`)"
        )
    else:
        check = f"that its command does not set {PIPE_DIRECTORY} itself (its plan runs it time-sliced)"
    return (
        f"{name} found outside its plan {len(findings)} times within {OUTSIDE_PLAN_WINDOW_SECS:g} s ({each}):"
        f" FATAL, not relaunched again. Check {check}, and its log (`colo logs {name}`); then"
        f" `colo agent start {name}`"
    )
