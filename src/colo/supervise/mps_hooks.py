"""The supervisor's view of the per-GPU MPS daemons (:class:`~colo.supervise.supervisor.MpsHooks`), over
``colo.gpu.mps.MpsFleet``: FAULT detection (``get_server_status`` and fault lines new in each daemon's
``control.log``/``server.log``, which may name the client), ``terminate_client``, restarting one daemon.
"""

from __future__ import annotations

import contextlib

from colo.errors import MpsError
from colo.gpu.mps import MpsDefaults, MpsFleet, ServerStatus
from colo.gpu.mps_log import MpsLogKind, MpsLogReader
from colo.supervise.supervisor import MpsFault


class FleetHooks:
    """:class:`MpsHooks` for an :class:`MpsFleet`; each MPS command is bounded by the daemon's timeout."""

    def __init__(self, fleet: MpsFleet) -> None:
        self.fleet = fleet
        self._logs = {d.gpu_uuid: self._reader(d.paths.log_dir) for d in fleet.daemons()}

    @staticmethod
    def _reader(log_dir: object) -> MpsLogReader:
        reader = MpsLogReader(str(log_dir))
        reader.read_new()  # what is already there happened before us (an orchestrator restart): skip it
        return reader

    def _uuids(self) -> list[str]:
        return [d.gpu_uuid for d in self.fleet.daemons()]

    def faults(self) -> list[MpsFault]:
        """GPUs whose MPS server says FAULT (``get_server_status``). Raises MpsError."""
        out: list[MpsFault] = []
        for uuid, reader in self._logs.items():
            for event in reader.read_new():
                if event.kind == MpsLogKind.FAULT:
                    out.append(MpsFault(uuid, f"MPS log: {event.message}", event.client_pid))
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
        self._logs[gpu_uuid] = self._reader(daemon.paths.log_dir)
