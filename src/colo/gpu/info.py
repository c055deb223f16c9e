"""``GET /gpu/info`` and ``colo gpu info --json``: GPUs, MPS state per GPU, client processes, one dict.

The shape keeps the seed system's keys (``mps_enabled``, ``mps: {enabled, pipe_dir, control_process}``) and
adds per-GPU detail::

    {"mps_enabled": true,
     "mps": {"enabled": true, "pipe_dir": ".../mps/GPU-.../pipe", "control_process": true,
             "root": ".../mps", "daemons": [DaemonStatus...], "foreign_daemons": [...]},
     "gpus": [{"index": 0, "uuid": ..., memory..., "mps": DaemonStatus, "processes": [...]}],
     "processes": [ClientProcess... + "mps_limit_bytes"],
     "driver_version": "580.159.04", "cuda_version": "13.0"}

Raises GpuError when NVML cannot be read (the caller turns it into exit 2 / HTTP 503).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from colo import units
from colo.gpu import procs
from colo.gpu.mps.control import MpsControl, SubprocessMpsControl
from colo.gpu.mps.daemon import MpsDaemon
from colo.gpu.mps.env import pinned_limit_text
from colo.gpu.mps.replies import DaemonStatus
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import ClientProcess, GpuBackend

_LIMIT_ITEM = re.compile(r"^\s*(\d+)\s*=\s*(\S+)\s*$")


def pinned_limit_of(pid: int) -> int | None:
    """The ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` a running process was started with, for its device 0 (or its
    only entry), in bytes; None when unset or unreadable (other user, other PID namespace)."""
    env = procs.environ(pid)
    if env is None:
        return None
    return parse_pinned_limit(pinned_limit_text(env))


def parse_pinned_limit(text: str, ordinal: int = 0) -> int | None:
    """Bytes for ``ordinal`` in ``"0=2G,1=512M"`` (a lone ``"2G"`` applies to every device); None if absent."""
    text = text.strip()
    if not text:
        return None
    for item in text.split(","):
        m = _LIMIT_ITEM.match(item)
        try:
            if m and int(m.group(1)) == ordinal:
                return units.parse_size(m.group(2))
            if not m and "=" not in item:
                return units.parse_size(item.strip())
        except ValueError:
            return None
    return None


def _process_dict(p: ClientProcess, limit_of: Callable[[int], int | None]) -> dict[str, Any]:
    d = p.to_dict()
    d["mps_limit_bytes"] = limit_of(p.pid) if p.is_mps_client else None
    return d


def gpu_info(
    backend: GpuBackend,
    root: MpsRoot,
    control: MpsControl | None = None,
    *,
    limit_of: Callable[[int], int | None] = pinned_limit_of,
    command_timeout_secs: float | None = None,
) -> dict[str, Any]:
    """The ``/gpu/info`` document. Only runs the MPS control program for GPUs whose daemon process exists,
    each command bounded by ``command_timeout_secs`` (the daemon's default when None).

    Raises GpuError (NVML). MPS problems are reported inside the document (``error`` per daemon).
    """
    gpus = backend.gpus()
    processes = backend.processes()
    control = control if control is not None else SubprocessMpsControl()
    statuses: dict[str, DaemonStatus] = {}
    for g in gpus:
        daemon = MpsDaemon(root.for_gpu(g.uuid), g.uuid, control)
        if command_timeout_secs is not None:
            daemon.command_timeout_secs = command_timeout_secs
        statuses[g.uuid] = daemon.status()
    ours = {os.path.realpath(s.pipe_dir) for s in statuses.values()}
    foreign = [
        {"pid": p.pid, "pipe_dir": p.pipe_dir, "visible_devices": p.visible_devices}
        for p in control.find_processes(None)
        if p.kind == "control" and os.path.realpath(p.pipe_dir) not in ours
    ]
    healthy = [s for s in statuses.values() if s.healthy]
    running = [s for s in statuses.values() if s.running]
    if healthy:
        pipe_dir: str | None = healthy[0].pipe_dir
    elif running:
        pipe_dir = running[0].pipe_dir
    elif foreign:
        pipe_dir = str(foreign[0]["pipe_dir"])
    else:
        pipe_dir = None
    rows = [_process_dict(p, limit_of) for p in processes]
    gpu_rows = []
    for g in gpus:
        row = g.to_dict()
        row["mps"] = statuses[g.uuid].to_dict()
        row["processes"] = [r for r in rows if r["gpu_uuid"] == g.uuid]
        gpu_rows.append(row)
    enabled = bool(healthy)
    return {
        "mps_enabled": enabled,
        "mps": {
            "enabled": enabled,
            "pipe_dir": pipe_dir,
            "control_process": bool(running or foreign),
            "root": str(root.base_dir),
            "daemons": [s.to_dict() for s in statuses.values()],
            "foreign_daemons": foreign,
        },
        "gpus": gpu_rows,
        "processes": rows,
        "driver_version": backend.driver_version(),
        "cuda_version": backend.cuda_version(),
    }
