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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Readings in a row on which an agent must differ from its plan before colo acts.
MISMATCH_READINGS = 2

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
