"""This node's MPS fleet: one control daemon per GPU colo runs MPS on, and the record of those colo started.

:class:`NodeFleet` is the one owner of that record (the store's ``mps_daemons_started``): it starts a daemon
for each GPU (or adopts the one already running there, after an orchestrator restart) and records the ones
it started; :meth:`NodeFleet.stop_started` quits those (and only those: a daemon someone else started is left
alone), and :meth:`NodeFleet.drop` takes one GPU out. ``colo down`` without an orchestrator goes through the
same record (:meth:`NodeFleet.from_record`, used by ``colo.supervise.statedir.stop_leftovers``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from colo.errors import ColoError, SupervisorError
from colo.gpu import procs
from colo.gpu.mps.control import MpsControl
from colo.gpu.mps.daemon import MpsDefaults
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.replies import StopResult
from colo.gpu.mps.root import MpsRoot
from colo.supervise.store import Store

#: Bounds every MPS command, so a daemon that stops answering cannot stall the supervision loop for long.
MPS_COMMAND_TIMEOUT_SECS = 5.0
#: The store's meta key listing the GPU UUIDs whose daemon colo started (only :class:`NodeFleet` spells it).
_STARTED_KEY = "mps_daemons_started"


class NodeFleet:
    """The MPS daemons of this node (``mps``: the :class:`~colo.gpu.mps.fleet.MpsFleet`, pipe/log dirs under
    ``<state_root>/mps``) and the store's record of the ones colo started. Nothing starts on construction.
    ``control`` None: the real ``nvidia-cuda-mps-control`` (colo then becomes the daemons' subreaper)."""

    def __init__(self, state_root: Path, uuids: Sequence[str], control: MpsControl | None, store: Store) -> None:
        self.mps = MpsFleet(
            MpsRoot.under_state_dir(state_root),
            list(uuids),
            control,
            daemon_options={"command_timeout_secs": MPS_COMMAND_TIMEOUT_SECS},
        )
        self.store = store
        self._real = control is None
        self._subreaper = False

    @classmethod
    def from_record(cls, state_root: Path, control: MpsControl | None, store: Store) -> NodeFleet:
        """The fleet of the daemons the store says colo started (``colo down`` without an orchestrator)."""
        return cls(state_root, sorted(set(store.get_meta(_STARTED_KEY, []))), control, store)

    @property
    def root(self) -> MpsRoot:
        return self.mps.root

    @property
    def control(self) -> MpsControl:
        assert self.mps.control is not None  # MpsFleet fills it in
        return self.mps.control

    def become_subreaper(self) -> None:
        """Before a real daemon starts: its ``-d`` launcher forks the daemon and exits; as a subreaper, colo
        inherits the daemon (and a killed daemon's server) and reaps them — a container's PID 1 may not."""
        if self._real and not self._subreaper:
            self._subreaper = procs.become_subreaper()

    def reap(self) -> None:
        """Collect MPS processes that ended as our children (see ``colo.gpu.mps.control``): no zombies."""
        self.control.reap()

    def uuids(self) -> list[str]:
        """The GPUs in the fleet."""
        return [d.gpu_uuid for d in self.mps.daemons()]

    def recorded(self) -> list[str]:
        """GPU UUIDs whose daemon colo started (this orchestrator or an earlier one of the state dir)."""
        return sorted(set(self.store.get_meta(_STARTED_KEY, [])))

    def ours(self, uuid: str) -> bool:
        """Whether colo started the daemon of GPU ``uuid`` (so colo quits it)."""
        try:
            if self.mps.daemon(uuid).started_by_colo:
                return True
        except KeyError:
            pass
        return uuid in self.recorded()

    def _record(self, uuids: Sequence[str]) -> None:
        self.store.set_meta(_STARTED_KEY, sorted(set(uuids)))

    def start_all(self) -> tuple[list[str], list[str]]:
        """Start (or adopt, when one already runs there) the daemon of every GPU of the fleet; returns the
        GPU UUIDs whose daemon was started and those adopted, and records the started ones.

        No server-wide defaults: each client's own CUDA_MPS_* variables set its limits, and a server default
        would cap a limit raised by ``colo apply`` (defaults reach new servers only).
        Raises MpsError when a daemon cannot be started (:meth:`stop_started` then stops those that were).
        """
        started: list[str] = []
        adopted: list[str] = []
        if self.mps.daemons():
            self.become_subreaper()
        for daemon in self.mps.daemons():
            if daemon.start(MpsDefaults()):
                started.append(daemon.gpu_uuid)
                self._record([*self.recorded(), daemon.gpu_uuid])
            else:
                adopted.append(daemon.gpu_uuid)
        return started, adopted

    def start(self, uuid: str) -> bool:
        """Take GPU ``uuid`` into the fleet and start its daemon (True) or adopt the one running (False).
        Raises MpsError."""
        self.become_subreaper()
        if self.mps.add(uuid).start(MpsDefaults()):
            self._record([*self.recorded(), uuid])
            return True
        return False

    def take_in(self, uuid: str) -> None:
        """Take GPU ``uuid`` into the fleet without starting anything (a daemon already runs there)."""
        self.mps.add(uuid)

    def drop(self, uuid: str, *, stop: bool) -> StopResult | None:
        """Leave GPU ``uuid`` out of the fleet and the record; quit its daemon first when ``stop``. Raises
        MpsError when it would not stop (it leaves the fleet all the same)."""
        try:
            return self.mps.daemon(uuid).stop() if stop else None
        finally:
            if stop:
                self.reap()
            self.mps.remove(uuid)
            self._record([u for u in self.recorded() if u != uuid])

    def stop_started(self, on_stopped: Callable[[str, StopResult], object] | None = None) -> None:
        """Quit every daemon of the fleet colo started (recorded, or started by this fleet); ``on_stopped(uuid,
        result)`` after each. The record is emptied. Raises SupervisorError naming every daemon that would not
        stop. The daemons that exited are reaped, and colo stops being a subreaper."""
        started = set(self.recorded())
        errors = []
        for daemon in self.mps.daemons():
            if daemon.gpu_uuid in started or daemon.started_by_colo:
                try:
                    result = daemon.stop()
                    if on_stopped is not None:
                        on_stopped(daemon.gpu_uuid, result)
                except ColoError as exc:
                    errors.append(str(exc))
        self._record([])
        self.reap()
        if self._subreaper:
            self._subreaper = not procs.become_subreaper(False)
        if errors:
            raise SupervisorError("; ".join(errors))
