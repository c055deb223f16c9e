"""One read of the GPU side (NVML + each GPU's MPS daemon), and the ``GET /gpu/info`` document built from it.

:func:`read_gpu_state` never raises for a GPU or daemon problem: a missing driver, a daemon that does not
answer, or a machine with no GPU becomes an ``error`` string in the state, so ``/gpu/info`` and
``/metrics`` always answer (``mps_enabled: false`` with the reason).

The document keeps the seed's keys (``mps_enabled``, ``mps.enabled``, ``mps.pipe_dir``,
``mps.control_process``) and adds per-GPU detail, each GPU's daemon (pipe dir, servers with pid, status and
clients) and every GPU process joined to the colo agent it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from colo.api.source import ApiSource
from colo.errors import ColoError
from colo.gpu.mps import DaemonStatus, MpsFleet
from colo.gpu.nvml import ClientProcess, GpuSnapshot
from colo.supervise.snapshots import AgentStatus

NO_GPU_HINT = "no GPU backend: colo sees no NVIDIA GPU here (is the driver loaded? try `nvidia-smi`)"


@dataclass(frozen=True)
class GpuState:
    """GPUs, GPU processes and MPS daemons at one moment; ``error`` says why something is missing."""

    gpus: tuple[GpuSnapshot, ...] = ()
    processes: tuple[ClientProcess, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    daemons: dict[str, DaemonStatus] = field(default_factory=dict)
    mps_enabled: bool = False
    error: str | None = None


def _text(err: BaseException) -> str:
    return str(err) or type(err).__name__


def client_pids(daemon: DaemonStatus) -> tuple[int, ...]:
    """Every client pid of every server of ``daemon``."""
    return tuple(pid for server in daemon.servers for pid in server.client_pids)


def _read_daemon(fleet: MpsFleet, uuid: str) -> DaemonStatus | None:
    """The fleet's daemon status for ``uuid`` (None when the GPU is not in the fleet). Never raises."""
    try:
        return fleet.daemon(uuid).status()
    except KeyError:
        return None
    except (ColoError, OSError) as err:
        return DaemonStatus(uuid, "", "", None, running=False, healthy=False, error=_text(err))


def read_gpu_state(source: ApiSource) -> GpuState:
    """Read NVML and every daemon of ``source`` now. Never raises for GPU/MPS failures (see ``error``)."""
    backend = source.gpu_backend()
    if backend is None:
        return GpuState(error=NO_GPU_HINT, mps_enabled=False)
    try:
        gpus = tuple(backend.gpus())
        processes = tuple(backend.processes())
        driver = backend.driver_version()
        cuda = backend.cuda_version()
    except (ColoError, OSError) as err:
        return GpuState(error=_text(err))
    fleet = source.mps_fleet()
    daemons: dict[str, DaemonStatus] = {}
    if fleet is not None:
        for g in gpus:
            d = _read_daemon(fleet, g.uuid)
            if d is not None:
                daemons[g.uuid] = d
    try:
        enabled = bool(source.mps_enabled())
    except (ColoError, OSError):
        enabled = False
    enabled = enabled or any(d.running for d in daemons.values())
    return GpuState(gpus, processes, driver, cuda, daemons, enabled)


def _agent_of(pid: int, by_pid: dict[int, str]) -> str | None:
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


def _process_doc(p: ClientProcess, by_pid: dict[int, str]) -> dict[str, Any]:
    return {
        "pid": p.pid,
        "name": p.name,
        "used_memory_bytes": p.used_memory_bytes,
        "is_mps_client": p.is_mps_client,
        "agent": _agent_of(p.pid, by_pid),
    }


def _daemon_doc(d: DaemonStatus | None, by_pid: dict[int, str]) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "pipe_dir": d.pipe_dir or None,
        "log_dir": d.log_dir or None,
        "control_pid": d.control_pid,
        "running": d.running,
        "healthy": d.healthy,
        "default_active_thread_pct": d.default_active_thread_pct,
        "servers": [
            {
                "pid": s.pid,
                "status": s.status.value,
                "clients": [{"pid": c, "agent": _agent_of(c, by_pid)} for c in s.client_pids],
            }
            for s in d.servers
        ],
        "error": d.error,
    }


def gpu_info_document(state: GpuState, statuses: Sequence[AgentStatus]) -> dict[str, Any]:
    """The ``GET /gpu/info`` document: the seed's keys first, then colo's detail (bytes, °C, W, percent)."""
    by_pid = {s.pid: s.name for s in statuses if s.pid is not None}
    running = [d for d in state.daemons.values() if d.running]
    first = running[0] if running else next(iter(state.daemons.values()), None)
    gpus_doc = []
    for g in state.gpus:
        procs = [p for p in state.processes if p.gpu_uuid == g.uuid or (not p.gpu_uuid and p.gpu_index == g.index)]
        agents = sorted({s.name for s in statuses if s.gpu_uuid == g.uuid})
        gpus_doc.append(
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "memory_total_bytes": g.memory_total_bytes,
                "memory_used_bytes": g.memory_used_bytes,
                "memory_free_bytes": g.memory_free_bytes,
                "sm_util_pct": g.sm_util_pct,
                "mem_util_pct": g.mem_util_pct,
                "temperature_c": g.temperature_c,
                "power_w": g.power_w,
                "compute_mode": g.compute_mode,
                "mig_mode": g.mig_mode,
                "mps_daemon": _daemon_doc(state.daemons.get(g.uuid), by_pid),
                "processes": [_process_doc(p, by_pid) for p in procs],
                "agents": agents,
            }
        )
    doc: dict[str, Any] = {
        "mps_enabled": state.mps_enabled,
        "mps": {
            "enabled": state.mps_enabled,
            "pipe_dir": (first.pipe_dir or None) if first else None,
            "control_process": bool(running),
            "daemons_running": len(running),
        },
        "gpu_count": len(state.gpus),
        "driver_version": state.driver_version,
        "cuda_version": state.cuda_version,
        "gpus": gpus_doc,
    }
    if state.error:
        doc["error"] = state.error
    return doc
