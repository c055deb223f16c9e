"""What each co-location mode (:class:`~colo.bench.modes.Mode`) of a run does: time-slicing, or colo's own MPS
daemon for the run.

``timeslice``: instances are ordinary CUDA processes; the GPU time-slices between their contexts. Their
``CUDA_MPS_PIPE_DIRECTORY`` points at an empty private directory, so a system MPS daemon (at the default
``/tmp/nvidia-mps``) cannot capture them by accident.

``mps``: colo starts an MPS control daemon in a private pipe directory under ``/tmp`` (pinned to the GPU
by UUID, through :mod:`colo.gpu.mps.daemon`; its environment from :mod:`colo.gpu.mps.env`), runs the point's instances as its clients, and quits the daemon
afterwards — also when the point fails. Optional per-instance limits: pinned memory and active thread %.

``external``: nothing is changed (HTTP targets: the server's own GPU setup is what is measured).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from colo.bench.modes import Mode, check_modes
from colo.errors import MpsError, UsageError
from colo.gpu.mps import env as mps_env


@dataclass(frozen=True)
class MpsClientLimits:
    """Per-instance MPS settings (None: no limit). Only applied in ``mps`` mode."""

    pinned_mem_limit_bytes: int | None = None
    active_thread_pct: int | None = None
    client_priority: int | None = None

    def env(self, device_ordinal: int = 0) -> dict[str, str]:
        """The client limit variables (:func:`colo.gpu.mps.env.limits_env`) for the limits that are set."""
        if self.active_thread_pct is not None and not 1 <= self.active_thread_pct <= 100:
            raise UsageError(f"active thread percentage {self.active_thread_pct} must be 1..100")
        return mps_env.limits_env(
            pinned_mem_limit_bytes=self.pinned_mem_limit_bytes,
            active_thread_pct=self.active_thread_pct,
            client_priority=self.client_priority,
            device_ordinal=device_ordinal,
        )


@contextmanager
def colocation_env(mode: Mode, gpu_uuid: str | None, *, tmp_root: str = "/tmp") -> Iterator[dict[str, str]]:
    """Environment additions for instances of one point in ``mode``; for ``mps`` a daemon runs meanwhile.

    ``gpu_uuid`` pins instances (and the daemon) to one GPU via ``CUDA_VISIBLE_DEVICES``; it is required for
    ``mps``. The private directory is removed afterwards. Raises MpsError when the daemon cannot start (or
    stop), UsageError for an unknown mode.
    """
    check_modes([mode])
    if mode == Mode.EXTERNAL:
        yield {}
        return
    base = tempfile.mkdtemp(prefix="colo-bench-", dir=tmp_root)
    daemon = None
    try:
        env: dict[str, str] = {}
        if gpu_uuid:
            env[mps_env.VISIBLE_DEVICES] = gpu_uuid
        if mode == Mode.TIMESLICE:
            empty = f"{base}/no-mps"
            os.makedirs(empty, exist_ok=True)
            env.update(mps_env.daemon_location(empty))
            yield env
            return
        if not gpu_uuid:
            raise MpsError("MPS mode needs a GPU (by UUID) and none was found", hint="is nvidia-smi working?")
        from colo.gpu.mps.daemon import MpsDaemon
        from colo.gpu.mps.root import MpsRoot

        paths = MpsRoot(base).for_gpu(gpu_uuid)
        daemon = MpsDaemon(paths, gpu_uuid)
        daemon.start()
        env.update(mps_env.daemon_location(paths))
        yield env
    finally:
        try:
            if daemon is not None:
                daemon.stop(timeout_secs=10.0)
        finally:
            shutil.rmtree(base, ignore_errors=True)
