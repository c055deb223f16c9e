"""What the orchestrator publishes: the node's one GPU reading (taken at most once per ``poll_secs``) and the
:class:`~colo.supervise.snapshots.SystemSnapshot` built from it and the agents.

Everything that needs the GPUs between polls reads the last reading here: the API (through the snapshot),
FAULT detection (``colo.supervise.recovery.mps_hooks``) and each agent's GPU memory (:meth:`Publisher.tree_memory`).
"""

from __future__ import annotations

from collections.abc import Sequence

from colo.clock import Clock
from colo.gpu import procs
from colo.gpu.poller import GpuPoller, GpuState, no_gpu_state
from colo.plan.types import Plan
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import AgentStatus, RecoverySummary, SystemSnapshot, UsageSample

#: How often (seconds) the GPUs and their MPS daemons are read.
GPU_POLL_SECS = 1.0


class Publisher:
    """Holds the last GPU reading and the last snapshot. ``poller`` None: no GPU here (the reading says so).
    ``clock`` (its monotonic seconds) schedules the polls. Call from one thread (the orchestrator's lock);
    :meth:`latest` may be read from any."""

    def __init__(
        self, poller: GpuPoller | None, clock: Clock, *, poll_secs: float = GPU_POLL_SECS
    ) -> None:
        self.poller = poller
        self._clock = clock
        self.poll_secs = poll_secs
        self.gpu: GpuState = no_gpu_state()
        self.gpu_at = 0.0
        self._next_poll = 0.0
        self._snapshot: SystemSnapshot | None = None

    def poll(self, *, force: bool = False) -> None:
        """Read the GPUs and their MPS daemons when a poll is due (or ``force``)."""
        now = self._clock.monotonic()
        if self.poller is None or (not force and now < self._next_poll):
            return
        self._next_poll = now + self.poll_secs
        self.gpu, self.gpu_at = self.poller.read(), now

    def reading(self) -> GpuState:
        """The last GPU reading."""
        return self.gpu

    def publish(
        self,
        config: ColoConfig,
        plan: Plan | None,
        agents: Sequence[AgentStatus],
        recoveries: Sequence[RecoverySummary] = (),
        usage: Sequence[UsageSample] = (),
        usage_rows: int = 0,
    ) -> SystemSnapshot:
        """Freeze ``agents``, the plan, the last GPU reading, the finished MPS recoveries and each agent's last
        usage window into the snapshot."""
        snap = SystemSnapshot(
            config, plan, tuple(agents), self.gpu, self.gpu_at, tuple(recoveries), tuple(usage), usage_rows
        )
        self._snapshot = snap
        return snap

    def latest(self) -> SystemSnapshot | None:
        """The last snapshot published (None before the first)."""
        return self._snapshot

    def tree_memory(self, pids: Sequence[int]) -> dict[int, int]:
        """GPU memory (bytes) of each pid's process tree (an agent's command may fork its CUDA worker), from
        the last reading: no second NVML reader."""
        used = self.gpu.process_memory_bytes()
        out: dict[int, int] = {}
        for pid in pids:
            vals = [used[q] for q in (pid, *procs.descendants(pid)) if q in used]
            if vals:
                out[pid] = sum(vals)
        return out
