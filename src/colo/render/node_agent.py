"""Where the node agent keeps its MPS pipe dirs on a host, and how pods and units find them.

The node agent (``colo node``, i.e. ``colo up --node NAME``) starts one MPS control daemon per GPU under
``<state_dir>/mps/<GPU UUID>/pipe`` (:class:`colo.gpu.mps.daemon.MpsRoot`). A plan rendered from an inventory knows
a GPU by its index on its node, not by its UUID, so the node agent also keeps index links::

    <state_dir>/mps/by-index/<index>  ->  ../<GPU UUID>

and a pod (or a systemd unit) of the agent planned on GPU 3 uses ``<state_dir>/mps/by-index/3/pipe``, which
is the same directory as its daemon's. Indices are NVML's on that node (``nvidia-smi -L``), which is what an
inventory's per-node count means. When the plan knows the UUID (``gpus: auto``), the UUID path is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from colo.errors import ConfigError
from colo.gpu.mps.env import client_env
from colo.gpu.mps.root import MAX_PIPE_DIR_CHARS, MpsRoot
from colo.plan.types import AgentPlan, GpuSlot

BY_INDEX = "by-index"


@dataclass(frozen=True)
class NodeAgentLayout:
    """Host paths of a node agent. ``state_dir`` is its ``COLO_STATE_DIR``; MPS lives under ``<it>/mps``."""

    state_dir: str = "/var/lib/colo"
    colo_bin: str = "colo"

    @property
    def mps_root(self) -> str:
        return str(MpsRoot.under_state_dir(self.state_dir).base_dir)

    def pipe_dir(self, gpu: GpuSlot) -> str:
        """The pipe dir clients of ``gpu`` use (by UUID when known, else through the index link).

        Raises ConfigError when the path is too long for the Unix sockets MPS keeps there.
        """
        if gpu.uuid:
            path = str(MpsRoot(self.mps_root).for_gpu(gpu.uuid).pipe_dir)
        else:
            path = f"{self.mps_root}/{BY_INDEX}/{gpu.index}/pipe"
        if len(path) > MAX_PIPE_DIR_CHARS:
            raise ConfigError(
                f"MPS pipe dir {path!r} is longer than {MAX_PIPE_DIR_CHARS} characters (Unix socket paths)",
                field="--state-dir",
                hint="choose a shorter state dir, e.g. /var/lib/colo",
            )
        return path

    def log_dir(self, gpu: GpuSlot) -> str:
        """The log dir of ``gpu``'s daemon (control.log, server.log)."""
        if gpu.uuid:
            return str(MpsRoot(self.mps_root).for_gpu(gpu.uuid).log_dir)
        return f"{self.mps_root}/{BY_INDEX}/{gpu.index}/log"

    def node_agent_argv(self, config_path: str, node: str, api_port: int, *, host: str = "0.0.0.0") -> list[str]:
        """The node agent's command: ``colo node CONFIG --node NODE`` serving its API on ``host:api_port``.

        Agents are not run by the node agent here (``--no-agents``): Kubernetes runs them as pods, systemd
        as units.
        """
        return [
            self.colo_bin,
            "node",
            config_path,
            "--node",
            node,
            "--state-dir",
            self.state_dir,
            "--host",
            host,
            "--port",
            str(api_port),
            "--no-agents",
        ]


def agent_client_env(agent: AgentPlan, gpu: GpuSlot, layout: NodeAgentLayout) -> dict[str, str]:
    """The MPS client environment of ``agent`` on ``gpu`` (device 0: the container or unit sees one GPU)."""
    return client_env(agent, layout.pipe_dir(gpu), device_ordinal=0, gpu_uuid=None, log_dir=layout.log_dir(gpu))


def index_links(gpus: Iterable[tuple[int, str]]) -> dict[str, str]:
    """``{"<index>": "../<uuid>"}`` for ``(index, uuid)`` pairs: the links under ``<mps_root>/by-index``."""
    return {str(index): f"../{uuid}" for index, uuid in sorted(gpus)}


def write_index_links(mps_root: str | Path, gpus: Iterable[tuple[int, str]]) -> list[Path]:
    """Create or correct ``<mps_root>/by-index/<index> -> ../<uuid>``; return the links written.

    A link that already points at the right UUID is left alone; one that points elsewhere (the GPUs were
    re-enumerated) is replaced atomically. Raises ConfigError naming the path on an OS error.
    """
    base = Path(mps_root) / BY_INDEX
    written: list[Path] = []
    try:
        base.mkdir(parents=True, exist_ok=True)
        for name, target in index_links(gpus).items():
            link = base / name
            if link.is_symlink() and os.readlink(link) == target:
                continue
            tmp = base / f".{name}.tmp"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(target)
            os.replace(tmp, link)
            written.append(link)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the MPS index links ({exc.strerror or exc})",
            source=str(base),
            hint="the node agent needs write access to its state dir",
        ) from exc
    return written
