"""The supervisor's view of the per-GPU MPS daemons (:class:`~colo.supervise.supervisor.MpsHooks`), over
``colo.gpu.mps.MpsFleet``: server FAULT polling, ``terminate_client``, and restarting one GPU's daemon.
"""

from __future__ import annotations

import contextlib

from colo.errors import MpsError
from colo.gpu.mps import MpsDefaults, MpsFleet, ServerStatus
from colo.supervise.supervisor import MpsFault


class FleetHooks:
    """:class:`MpsHooks` for an :class:`MpsFleet`; each MPS command is bounded by the daemon's timeout."""

    def __init__(self, fleet: MpsFleet) -> None:
        self.fleet = fleet

    def _uuids(self) -> list[str]:
        return [d.gpu_uuid for d in self.fleet.daemons()]

    def faults(self) -> list[MpsFault]:
        """GPUs whose MPS server says FAULT (``get_server_status``). Raises MpsError."""
        out: list[MpsFault] = []
        for uuid in self._uuids():
            daemon = self.fleet.daemon(uuid)
            try:
                pids = daemon.server_pids()
            except MpsError:
                continue  # daemon not answering: the GPU layer reports it; nothing to recover here
            for pid in pids:
                with contextlib.suppress(MpsError):
                    if daemon.server_status(pid) == ServerStatus.FAULT:
                        out.append(MpsFault(uuid, f"MPS server {pid} reports FAULT"))
                        break
        return out

    def ready(self, gpu_uuid: str) -> bool:
        """No server of this GPU in FAULT. Raises MpsError when the daemon does not answer."""
        daemon = self.fleet.daemon(gpu_uuid)
        return all(daemon.server_status(pid) != ServerStatus.FAULT for pid in daemon.server_pids())

    def terminate_client(self, gpu_uuid: str, client_pid: int) -> None:
        """``terminate_client`` on the server that has this client; best effort, never raises."""
        try:
            daemon = self.fleet.daemon(gpu_uuid)
            for spid in daemon.server_pids():
                if client_pid in daemon.client_pids(spid):
                    daemon.terminate_client(spid, client_pid)
                    return
        except (MpsError, KeyError):
            return

    def restart_daemon(self, gpu_uuid: str) -> None:
        """Stop and start this GPU's daemon with the defaults it had. Raises MpsError."""
        daemon = self.fleet.daemon(gpu_uuid)
        defaults = daemon.last_defaults or MpsDefaults()
        daemon.stop()
        daemon.start(defaults)
