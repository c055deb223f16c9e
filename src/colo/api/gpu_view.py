"""The ``GET /gpu/info`` document: the snapshot's GPU reading joined with the agents.

The reading is :func:`colo.gpu.info.gpu_info`'s document (the same as ``colo gpu info --json``: the seed's
keys ``mps_enabled``, ``mps.enabled``, ``mps.pipe_dir``, ``mps.control_process``, then per-GPU detail, each
GPU's daemon with its servers and clients, every GPU process with its MPS limit), taken by the source's one
poller (:class:`colo.gpu.poller.GpuPoller`). The API adds the agent-level join: each process and each MPS
client gets the ``agent`` it belongs to, each GPU the agents placed on it and, in ``agents_mps``, each of
those agents' MPS membership: ``mps_planned`` (its plan runs it as an MPS client) and ``mps_client`` (NVML
lists its process as one, nvidia-smi type ``M+C``; null until its process holds a CUDA context).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from colo.gpu import procs
from colo.gpu.poller import GpuState
from colo.supervise.snapshots import AgentStatus


def agent_of(pid: int, by_pid: dict[int, str]) -> str | None:
    """The agent whose process is ``pid`` or one of its ancestors (an agent's command may fork its worker)."""
    if pid in by_pid:
        return by_pid[pid]
    for parent in procs.ancestors(pid) or ():
        if parent in by_pid:
            return by_pid[parent]
    return None


def gpu_info_document(state: GpuState, statuses: Sequence[AgentStatus]) -> dict[str, Any]:
    """``state``'s document with agents joined in: ``agent`` on every process, ``clients`` (pid and agent) on
    every MPS server, ``agents`` (names placed there) on every GPU. ``state`` itself is left unchanged."""
    doc = copy.deepcopy(dict(state.info))
    by_pid = {s.pid: s.name for s in statuses if s.pid is not None}
    joined: dict[int, str | None] = {}

    def join(pid: int) -> str | None:
        if pid not in joined:
            joined[pid] = agent_of(pid, by_pid)
        return joined[pid]

    for row in doc.get("processes", []):
        row["agent"] = join(int(row["pid"]))
    for gpu in doc.get("gpus", []):
        for row in gpu.get("processes", []):
            row["agent"] = join(int(row["pid"]))
        for server in (gpu.get("mps") or {}).get("servers", []):
            server["clients"] = [{"pid": pid, "agent": join(int(pid))} for pid in server.get("client_pids", [])]
        here = sorted((s for s in statuses if s.gpu_uuid and s.gpu_uuid == gpu.get("uuid")), key=lambda s: s.name)
        gpu["agents"] = [s.name for s in here]
        gpu["agents_mps"] = [
            {"agent": s.name, "pid": s.pid, "mps_planned": s.mps_planned, "mps_client": s.mps_client} for s in here
        ]
    return doc
