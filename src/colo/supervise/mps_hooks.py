"""The supervisor's view of the per-GPU MPS daemons (:class:`~colo.supervise.recovery.MpsHooks`), over
``colo.gpu.mps.daemon.MpsFleet``: FAULT detection (the server statuses of the node's one GPU reading, else
``get_server_status``; fault lines new in each daemon's ``control.log``/``server.log`` name the client when
they can), ``terminate_client``, restarting one daemon.

A fault line alone does not start a recovery (a stray "fatal" in a log must not restart a GPU's agents):
the server's own FAULT status does, and agents dying with MPS errors do (see the supervisor).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from colo.errors import MpsError
from colo.gpu.mps.daemon import MpsDefaults
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.log import MpsLogKind, MpsLogReader
from colo.gpu.mps.replies import ServerStatus
from colo.gpu.poller import GpuState
from colo.supervise.recovery import MpsFault

#: A fault line in an MPS log names the culprit of a FAULT seen within this many seconds.
HINT_SECS = 60.0


class FleetHooks:
    """:class:`MpsHooks` for an :class:`MpsFleet`; each MPS command is bounded by the daemon's timeout.

    ``reading`` (the orchestrator's last :class:`~colo.gpu.poller.GpuState`): when given, FAULT is read from
    it instead of asking the daemons again, so one poller reads each GPU's MPS.
    """

    def __init__(self, fleet: MpsFleet, reading: Callable[[], GpuState] | None = None) -> None:
        self.fleet = fleet
        self._reading = reading
        self._logs = {d.gpu_uuid: self._reader(d.paths.log_dir) for d in fleet.daemons()}
        self._hints: dict[str, tuple[float, int | None, str]] = {}  # uuid -> (when, client pid, log line)

    @staticmethod
    def _reader(log_dir: object) -> MpsLogReader:
        reader = MpsLogReader(str(log_dir))
        reader.read_new()  # what is already there happened before us (an orchestrator restart): skip it
        return reader

    def _uuids(self) -> list[str]:
        return [d.gpu_uuid for d in self.fleet.daemons()]

    def faults(self) -> list[MpsFault]:
        """GPUs whose MPS server says FAULT (in the last GPU reading, else ``get_server_status``), with the
        client a recent fault line in that daemon's logs names. Never raises for a daemon that does not
        answer (skipped)."""
        now = time.monotonic()
        for uuid, reader in self._logs.items():
            for event in reader.read_new():
                if event.kind == MpsLogKind.FAULT:
                    old = self._hints.get(uuid)
                    pid = event.client_pid or (old[1] if old and now - old[0] < HINT_SECS else None)
                    self._hints[uuid] = (now, pid, event.message)
        out: list[MpsFault] = []
        for uuid, pid in self._faulted_servers():
            hint = self._hints.pop(uuid, None)
            if hint is not None and now - hint[0] < HINT_SECS:
                out.append(MpsFault(uuid, f"MPS server {pid} reports FAULT; log: {hint[2]}", hint[1]))
            else:
                out.append(MpsFault(uuid, f"MPS server {pid} reports FAULT"))
        return out

    def _faulted_servers(self) -> list[tuple[str, int]]:
        """(GPU UUID, server pid) of the first server in FAULT on each GPU of the fleet: from the last GPU
        reading, and asked of the daemon itself for a GPU the reading did not fully see."""
        uuids = self._uuids()
        out: list[tuple[str, int]] = []
        if self._reading is not None:
            seen, out = self._faulted_in(self._reading())
            uuids = [u for u in uuids if u not in seen]
        return out + self._asked(uuids)

    def _asked(self, uuids: list[str]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for uuid in uuids:
            daemon = self.fleet.daemon(uuid)
            try:
                pids = daemon.server_pids()
            except MpsError:
                continue  # daemon not answering: the GPU layer reports it; nothing to recover here
            for pid in pids:
                with contextlib.suppress(MpsError):
                    if daemon.server_status(pid) == ServerStatus.FAULT:
                        out.append((uuid, pid))
                        break
        return out

    def _faulted_in(self, state: GpuState) -> tuple[set[str], list[tuple[str, int]]]:
        """The GPUs whose daemon the reading saw whole (``gpus[].mps`` without an ``error``, as ``/gpu/info``
        shows it), and the FAULT servers among them."""
        mine = set(self._uuids())
        seen: set[str] = set()
        out: list[tuple[str, int]] = []
        for gpu in state.info.get("gpus", []):
            uuid = gpu.get("uuid")
            daemon = gpu.get("mps") or {}
            if uuid not in mine or daemon.get("error") or not daemon.get("healthy"):
                continue  # a partial reading: ask the daemon itself
            seen.add(str(uuid))
            for server in daemon.get("servers") or []:
                if server.get("status") == ServerStatus.FAULT.value:
                    out.append((str(uuid), int(server["pid"])))
                    break
        return seen, out

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
        self._hints.pop(gpu_uuid, None)
