"""The MPS environment, built in one place: the only module of colo that spells the ``CUDA_MPS_*`` names.

A client finds its GPU's daemon through ``CUDA_MPS_PIPE_DIRECTORY`` (and ``CUDA_MPS_LOG_DIRECTORY``) and is
limited by ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="<ordinal>=<N>M"`` (whole MiB, rounded up),
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and ``CUDA_MPS_CLIENT_PRIORITY``; a client can only lower the
server's values. The daemon itself gets the pipe and log dirs and ``CUDA_VISIBLE_DEVICES=<uuid>``, never a
client's limits (its servers would inherit them).

Everything else — the supervisor's launch specs, ``colo mps env``, rendered units and pods, the benchmark's
instances, the profiler's children — asks this module for the variables and their names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from colo import units
from colo.errors import MpsError
from colo.gpu.mps.root import MpsPaths

PIPE_DIRECTORY = "CUDA_MPS_PIPE_DIRECTORY"
LOG_DIRECTORY = "CUDA_MPS_LOG_DIRECTORY"
PINNED_DEVICE_MEM_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
ACTIVE_THREAD_PERCENTAGE = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
CLIENT_PRIORITY = "CUDA_MPS_CLIENT_PRIORITY"
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"  # CUDA's, not MPS's: which GPU(s) a process sees

# Client-side variables: they limit one client and must not leak into a daemon's environment.
CLIENT_LIMIT_VARS = (PINNED_DEVICE_MEM_LIMIT, ACTIVE_THREAD_PERCENTAGE, CLIENT_PRIORITY)
# What makes a process an MPS client (or not), as reported next to its results.
CLIENT_VARS = (VISIBLE_DEVICES, PIPE_DIRECTORY, *CLIENT_LIMIT_VARS)


class ClientSettings(Protocol):
    """What a client's environment is made of (``colo.plan.types.AgentPlan`` is one): a name for errors,
    the pinned memory limit in bytes, the active thread percentage and the client priority (0 or 1)."""

    @property
    def name(self) -> str: ...

    @property
    def limit_bytes(self) -> int: ...

    @property
    def active_thread_pct(self) -> int: ...

    @property
    def client_priority(self) -> int: ...


def pinned_limit_value(limit_bytes: int, device_ordinal: int = 0) -> str:
    """``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``'s value: ``"<ordinal>=<N>M"``, whole MiB rounded up."""
    return f"{device_ordinal}={units.mps_limit(limit_bytes)}"


def limits_env(
    *,
    pinned_mem_limit_bytes: int | None = None,
    active_thread_pct: int | None = None,
    client_priority: int | None = None,
    device_ordinal: int = 0,
) -> dict[str, str]:
    """The client limit variables for the limits that are set (None: leave MPS's own)."""
    out: dict[str, str] = {}
    if pinned_mem_limit_bytes is not None:
        out[PINNED_DEVICE_MEM_LIMIT] = pinned_limit_value(pinned_mem_limit_bytes, device_ordinal)
    if active_thread_pct is not None:
        out[ACTIVE_THREAD_PERCENTAGE] = str(int(active_thread_pct))
    if client_priority is not None:
        out[CLIENT_PRIORITY] = str(int(client_priority))
    return out


def daemon_location(pipe_dir: str | Path | MpsPaths, log_dir: str | Path | None = None) -> dict[str, str]:
    """Where a daemon is: ``CUDA_MPS_PIPE_DIRECTORY`` and, when known, ``CUDA_MPS_LOG_DIRECTORY``."""
    if isinstance(pipe_dir, MpsPaths):
        log_dir = log_dir if log_dir is not None else pipe_dir.log_dir
        pipe_dir = pipe_dir.pipe_dir
    env = {PIPE_DIRECTORY: str(pipe_dir)}
    if log_dir is not None:
        env[LOG_DIRECTORY] = str(log_dir)
    return env


def pipe_dir_of(env: Mapping[str, str]) -> str | None:
    """The pipe directory an environment points at (None: MPS's default, ``/tmp/nvidia-mps``)."""
    return env.get(PIPE_DIRECTORY) or None


def log_dir_of(env: Mapping[str, str]) -> str | None:
    """The log directory an environment points at (None: MPS's default)."""
    return env.get(LOG_DIRECTORY) or None


def pinned_limit_text(env: Mapping[str, str]) -> str:
    """The raw ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` of an environment ("" when unset)."""
    return env.get(PINNED_DEVICE_MEM_LIMIT, "")


def daemon_env(paths: MpsPaths, gpu_uuid: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a GPU's control daemon and the commands sent to it: ``base`` (default: ours)
    without any client limit, with the pipe and log dirs, pinned to the GPU (``CUDA_VISIBLE_DEVICES``)."""
    env = dict(os.environ if base is None else base)
    for k in CLIENT_LIMIT_VARS:
        env.pop(k, None)
    env.update(daemon_location(paths))
    env[VISIBLE_DEVICES] = gpu_uuid
    return env


def client_env(
    agent: ClientSettings,
    pipe_dir: str | Path | MpsPaths,
    *,
    device_ordinal: int = 0,
    gpu_uuid: str | None = None,
    log_dir: str | Path | None = None,
) -> dict[str, str]:
    """The environment an agent's process needs to run as an MPS client under its plan entry.

    The daemon's location (:func:`daemon_location`), ``CUDA_VISIBLE_DEVICES=<uuid>`` when ``gpu_uuid`` is
    given (the client then sees it as device 0), and the three limits (:func:`limits_env`). Raises MpsError
    when the agent has no memory limit.
    """
    if agent.limit_bytes <= 0:
        raise MpsError(f"agent {agent.name!r} has no memory limit in the plan", hint="run `colo plan` to see why")
    env = daemon_location(pipe_dir, log_dir)
    if gpu_uuid:
        env[VISIBLE_DEVICES] = gpu_uuid
    env.update(
        limits_env(
            pinned_mem_limit_bytes=agent.limit_bytes,
            active_thread_pct=agent.active_thread_pct,
            client_priority=agent.client_priority,
            device_ordinal=device_ordinal,
        )
    )
    return env
