"""The argv that runs colo's built-in model agent for one agent of a colo.yaml.

An agent whose ``command`` is absent (``null``) in colo.yaml runs the built-in agent. The supervisor builds
its argv with :func:`builtin_agent_command`, which uses the orchestrator's own interpreter
(``sys.executable``) rather than whatever ``python3`` is first on PATH, so the agent sees the same torch,
transformers and colo as the orchestrator. ``PYTHONPATH`` must reach the child too (the supervisor passes its
environment through) when colo is not pip-installed.

No heavy imports here: the supervisor imports this module.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence

MODULE = "colo.modelserver.serve"
DEFAULT_HOST = "127.0.0.1"
#: The built-in agent on a GPU without MPS caps PyTorch's caching allocator at this many bytes (its planned
#: limit): ``torch.cuda.set_per_process_memory_fraction`` (``serve.cap_allocator``). Not set under MPS, whose
#: pinned limit holds the whole process.
MEMORY_CAP_VAR = "COLO_MEMORY_CAP_BYTES"
#: ``on`` (the default) or ``off``: whether the built-in agent replays encoder forwards from CUDA graphs (the
#: default of its ``--cuda-graphs``; ``colo.modelserver.graphs``).
CUDA_GRAPHS_VAR = "COLO_CUDA_GRAPHS"
#: ``auto`` (the default), ``spin`` or ``block``: how the built-in agent's device thread waits for a batch on
#: CUDA (the default of its ``--cuda-wait``; ``colo.modelserver.inference.CudaWait``).
CUDA_WAIT_VAR = "COLO_CUDA_WAIT"
#: What the built-in agent imports beyond colo's own dependencies (the ``profile`` extra).
NEEDED_MODULES = ("torch", "transformers")


def missing_modules(needed: Sequence[str] = NEEDED_MODULES) -> list[str]:
    """The modules of ``needed`` this interpreter (``sys.executable``, which the built-in agent runs with)
    cannot import, found with :func:`importlib.util.find_spec` — without importing them (torch is slow)."""
    missing = []
    for name in needed:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken package, or a half-imported module without a spec
            found = False
        if not found:
            missing.append(name)
    return missing


def builtin_agent_command(
    agent_name: str,
    config_path: str | os.PathLike[str],
    port: int,
    *,
    host: str = DEFAULT_HOST,
    worst_case: bool = False,
    device: str | None = None,
    python: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Return the argv of ``python -m colo.modelserver.serve`` for ``agent_name`` of ``config_path``.

    ``config_path`` is made absolute so the agent finds it whatever its working directory. ``port`` is the
    agent's ``port`` from colo.yaml (1..65535). ``worst_case`` adds ``--worst-case`` (one worst-case batch ×
    sequence forward at start-up, so the process's memory peak matches the plan). ``device`` (``cuda``,
    ``cuda:0``, ``cpu``) is left to the agent (cuda when available) unless given. ``python`` defaults to
    ``sys.executable``.

    Raises ValueError for an empty agent name or a port out of range (the spec validates both first; this
    guards direct callers).
    """
    if not agent_name:
        raise ValueError("agent_name is empty")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    argv = [
        python or sys.executable,
        "-m",
        MODULE,
        "--agent",
        agent_name,
        "--config",
        os.path.abspath(os.fspath(config_path)),
        "--host",
        host,
        "--port",
        str(int(port)),
    ]
    if worst_case:
        argv.append("--worst-case")
    if device:
        argv += ["--device", device]
    argv += list(extra_args)
    return argv


def memory_cap_env(limit_bytes: int) -> dict[str, str]:
    """The environment that makes the built-in agent cap its allocator at ``limit_bytes`` (no MPS)."""
    return {MEMORY_CAP_VAR: str(int(limit_bytes))}


def memory_cap_of(environ: Mapping[str, str]) -> int | None:
    """The allocator cap :func:`memory_cap_env` put in ``environ``, in bytes; None when unset. Raises ValueError
    for a value that is not a whole number."""
    text = environ.get(MEMORY_CAP_VAR, "")
    return int(text) if text else None


def health_url(port: int, host: str = DEFAULT_HOST) -> str:
    """The built-in agent's readiness URL: 200 once its models are loaded and warmed up."""
    return f"http://{host}:{int(port)}/health"
