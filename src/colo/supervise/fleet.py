"""The life cycle of this node's MPS fleet: one control daemon per GPU colo runs agents on.

:func:`start_fleet` starts a daemon for each GPU (or adopts the one already running there, after an
orchestrator restart) and records in the store which daemons colo started; :func:`stop_fleet` quits those
(and only those: a daemon someone else started is left alone). ``colo down`` without an orchestrator uses the
same record (``colo.supervise.statedir.stop_leftovers``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from colo.errors import ColoError, SupervisorError
from colo.gpu.mps.control import MpsControl
from colo.gpu.mps.daemon import MpsDefaults
from colo.gpu.mps.fleet import MpsFleet
from colo.gpu.mps.root import MpsRoot
from colo.supervise.store import Store

#: Bounds every MPS command, so a daemon that stops answering cannot stall the supervision loop for long.
MPS_COMMAND_TIMEOUT_SECS = 5.0
#: The store's meta key listing the GPU UUIDs whose daemon colo started.
STARTED_KEY = "mps_daemons_started"


def make_fleet(state_root: Path, uuids: Sequence[str], control: MpsControl | None) -> MpsFleet:
    """The fleet of daemons for ``uuids``, pipe/log dirs under ``<state_root>/mps`` (nothing started yet)."""
    return MpsFleet(
        MpsRoot.under_state_dir(state_root),
        list(uuids),
        control,
        daemon_options={"command_timeout_secs": MPS_COMMAND_TIMEOUT_SECS},
    )


def start_fleet(fleet: MpsFleet, store: Store) -> tuple[list[str], list[str]]:
    """Start (or adopt, when one already runs there) the daemon of every GPU of ``fleet``; returns the GPU
    UUIDs whose daemon was started and those adopted, and records the started ones in the store.

    No server-wide defaults: each client's own CUDA_MPS_* variables set its limits, and a server default
    would cap a limit raised by ``colo apply`` (defaults reach new servers only).
    Raises MpsError when a daemon cannot be started (:func:`stop_fleet` then stops those that were).
    """
    started: list[str] = []
    adopted: list[str] = []
    for daemon in fleet.daemons():
        if daemon.start(MpsDefaults()):
            started.append(daemon.gpu_uuid)
        else:
            adopted.append(daemon.gpu_uuid)
    store.set_meta(STARTED_KEY, sorted(set(started) | set(store.get_meta(STARTED_KEY, []))))
    return started, adopted


def stop_fleet(fleet: MpsFleet, store: Store, on_stopped: Callable[[str], object] | None = None) -> None:
    """Quit every daemon colo started (recorded in the store, or started by this fleet); ``on_stopped(uuid)``
    after each. Raises SupervisorError naming every daemon that would not stop."""
    started = set(store.get_meta(STARTED_KEY, []))
    errors = []
    for daemon in fleet.daemons():
        if daemon.gpu_uuid in started or daemon.started_by_colo:
            try:
                daemon.stop()
                if on_stopped is not None:
                    on_stopped(daemon.gpu_uuid)
            except ColoError as exc:
                errors.append(str(exc))
    store.set_meta(STARTED_KEY, [])
    if errors:
        raise SupervisorError("; ".join(errors))
