"""One read of the GPU side, and the ``GET /gpu/info`` document built from it.

The document is :func:`colo.gpu.info.gpu_info`'s (the same as ``colo gpu info --json``: the seed's keys
``mps_enabled``, ``mps.enabled``, ``mps.pipe_dir``, ``mps.control_process``, then per-GPU detail, each GPU's
daemon with its servers and clients, every GPU process with its MPS limit). The API adds the agent-level
join: each process and each MPS client gets the ``agent`` it belongs to, each GPU the agents placed on it.

:func:`read_gpu_state` never raises for a GPU problem: no GPU backend, or NVML failing, gives the seed's
keys with ``mps_enabled: false`` and an ``error`` that says why, so ``/gpu/info`` and ``/metrics`` always
answer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from colo.api.source import ApiSource
from colo.errors import ColoError
from colo.files import state_dir
from colo.gpu.info import gpu_info
from colo.gpu.mps.root import MpsRoot
from colo.supervise.snapshots import AgentStatus

NO_GPU_HINT = "no GPU backend: colo sees no NVIDIA GPU here (is the driver loaded? try `nvidia-smi`)"


def no_gpu_document(reason: str) -> dict[str, Any]:
    """The seed's keys for a machine where the GPUs cannot be read, with the reason."""
    return {
        "mps_enabled": False,
        "mps": {"enabled": False, "pipe_dir": None, "control_process": False},
        "gpus": [],
        "processes": [],
        "driver_version": None,
        "cuda_version": None,
        "error": reason,
    }


@dataclass(frozen=True)
class GpuState:
    """The ``gpu_info`` document at one moment (never mutated); ``error`` when the GPUs could not be read."""

    info: dict[str, Any]
    error: str | None = None


def read_gpu_state(source: ApiSource) -> GpuState:
    """Read NVML and every GPU's MPS daemon now. Never raises for GPU/MPS failures (see ``error``).

    The daemons are looked for under the fleet's root (``colo up``), else ``<state_dir>/mps``; daemons
    started elsewhere (e.g. the system's ``/tmp/nvidia-mps``) are listed as ``foreign_daemons``.
    """
    backend = source.gpu_backend()
    if backend is None:
        return GpuState(no_gpu_document(NO_GPU_HINT), NO_GPU_HINT)
    fleet = source.mps_fleet()
    try:
        if fleet is not None:
            info = gpu_info(backend, fleet.root, fleet.control)
        else:
            info = gpu_info(backend, MpsRoot.under_state_dir(state_dir(source.config().state_dir)))
    except (ColoError, OSError) as err:
        reason = str(err) or type(err).__name__
        return GpuState(no_gpu_document(reason), reason)
    return GpuState(info)


def agent_of(pid: int, by_pid: dict[int, str]) -> str | None:
    """The agent whose process is ``pid`` or one of its ancestors (an agent's command may fork its worker)."""
    if pid in by_pid:
        return by_pid[pid]
    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in by_pid:
                return by_pid[parent.pid]
    except (psutil.Error, OSError):
        return None
    return None


def gpu_info_document(state: GpuState, statuses: Sequence[AgentStatus]) -> dict[str, Any]:
    """``state``'s document with agents joined in: ``agent`` on every process, ``clients`` (pid and agent) on
    every MPS server, ``agents`` (names placed there) on every GPU. ``state`` itself is left unchanged."""
    doc = copy.deepcopy(state.info)
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
        gpu["agents"] = sorted(s.name for s in statuses if s.gpu_uuid and s.gpu_uuid == gpu.get("uuid"))
    return doc
