"""One MPS control daemon per GPU under one :class:`~colo.gpu.mps.root.MpsRoot`: the daemons, their status,
and the daemons here that are not colo's. Starting and stopping them (and the record of which ones colo
started) is ``colo.supervise.fleet.NodeFleet``'s job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from colo.gpu.mps.control import MpsControl, MpsProcess, SubprocessMpsControl
from colo.gpu.mps.daemon import MpsDaemon
from colo.gpu.mps.replies import DaemonStatus
from colo.gpu.mps.root import MpsRoot


@dataclass
class MpsFleet:
    """One daemon per GPU under one root."""

    root: MpsRoot
    gpu_uuids: Sequence[str]
    control: MpsControl | None = None
    daemon_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.control is None:
            self.control = SubprocessMpsControl()
        self._daemons = {
            u: MpsDaemon(self.root.for_gpu(u), u, self.control, **self.daemon_options) for u in self.gpu_uuids
        }

    def daemon(self, uuid: str) -> MpsDaemon:
        """The daemon of this GPU. Raises KeyError for a GPU not in the fleet."""
        return self._daemons[uuid]

    def daemons(self) -> list[MpsDaemon]:
        return list(self._daemons.values())

    def add(self, uuid: str) -> MpsDaemon:
        """Take GPU ``uuid`` into the fleet (nothing is started); its daemon if it is in already."""
        if uuid not in self._daemons:
            assert self.control is not None
            self._daemons[uuid] = MpsDaemon(self.root.for_gpu(uuid), uuid, self.control, **self.daemon_options)
            self.gpu_uuids = [*self.gpu_uuids, uuid]
        return self._daemons[uuid]

    def remove(self, uuid: str) -> None:
        """Leave GPU ``uuid`` out of the fleet (nothing is stopped: stop its daemon first)."""
        self._daemons.pop(uuid, None)
        self.gpu_uuids = [u for u in self.gpu_uuids if u != uuid]

    def statuses(self) -> list[DaemonStatus]:
        return [d.status() for d in self._daemons.values()]

    def foreign_daemons(self) -> list[MpsProcess]:
        """MPS control daemons here that are not in this fleet's pipe dirs (e.g. /tmp/nvidia-mps)."""
        assert self.control is not None
        ours = {os.path.realpath(str(d.paths.pipe_dir)) for d in self._daemons.values()}
        return [
            p
            for p in self.control.find_processes(None)
            if p.kind == "control" and os.path.realpath(p.pipe_dir) not in ours
        ]
