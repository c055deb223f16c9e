"""colo's state directory: where an orchestrator keeps its files, whether one runs, stopping the one that runs,
and cleaning up after one that died.

``<state_dir>/colo.db`` (SQLite: agents, events, meta), ``logs/<agent>.log``, ``mps/<uuid>/{pipe,log}``,
``config.yaml`` (what the built-in agents read), ``colo.pid`` and ``colo.lock`` (held by the running
orchestrator: one per state dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import yaml

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import SupervisorError
from colo.files import state_dir as default_state_dir
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import AgentStatus, Event

#: Seconds between two looks at whether a stopping orchestrator let go of its state dir.
POLL_SECS = 0.2


class _Under:
    """A path a fixed name below :attr:`StateDirPaths.root`, read as an attribute."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, paths: StateDirPaths, owner: type[StateDirPaths]) -> Path:
        return paths.root / self.name


@dataclass(frozen=True)
class StateDirPaths:
    """Where an orchestrator keeps its files."""

    root: Path

    db = _Under("colo.db")
    logs = _Under("logs")
    pid_file = _Under("colo.pid")
    lock_file = _Under("colo.lock")
    config_copy = _Under("config.yaml")
    tuned_limits = _Under("tuned_limits.json")
    mps = _Under("mps")


def resolve_state_dir(config: ColoConfig | None, override: str | Path | None) -> Path:
    """``--state-dir``, else the config's ``state_dir``, else the default (``$COLO_STATE_DIR`` …)."""
    if override:
        return Path(override).expanduser()
    return default_state_dir(config.state_dir if config else None)


def running_orchestrator(state_dir: Path) -> int | None:
    """The pid of the orchestrator that holds ``state_dir`` (its lock is held), else None."""
    paths = StateDirPaths(Path(state_dir))
    if not paths.lock_file.exists():
        return None
    try:
        fd = os.open(paths.lock_file, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                return int(paths.pid_file.read_text().strip())
            except (OSError, ValueError):
                return -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def config_yaml(config: ColoConfig, source: Path | None = None) -> str:
    """``config`` as colo.yaml text (sizes in bytes; model paths made absolute against ``source``'s dir).

    Only the fields the user set are written (``exclude_unset``): read back, the copy is the same config *and*
    still tells a default from a choice — the built-in agent's fast health cadence applies to every ``health``
    field the user left unset, so a copy that spelled out the defaults (what `colo apply` sends) would turn a
    0.5 s probe into the generic 5 s one."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
    if source is not None:
        for spec in data.get("models", {}).values():
            p = spec.get("path")
            if p and not os.path.isabs(os.path.expanduser(p)):
                spec["path"] = str((source.parent / p).resolve())
    return "# written by colo: the configuration the running agents were started with\n" + yaml.safe_dump(
        data, sort_keys=False
    )


@dataclass(frozen=True)
class Stopped:
    """What :func:`stop_orchestrator` did: the pid of the orchestrator that stopped on SIGTERM, or (none was
    running) None and the lines :func:`stop_leftovers` returned (empty: there was nothing to stop)."""

    orchestrator_pid: int | None
    leftovers: list[str]


def stop_orchestrator(state_dir: Path, *, timeout_secs: float, clock: Clock = SYSTEM_CLOCK) -> Stopped:
    """``colo down``: SIGTERM to the orchestrator holding ``state_dir`` and a wait until it lets go of it (it
    stops its agents and quits the MPS daemons it started first); with none running, :func:`stop_leftovers`.

    Raises SupervisorError when it does not stop within ``timeout_secs``, or when the state dir is locked by
    a process without a pid file."""
    pid = running_orchestrator(state_dir)
    if pid is not None and pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = None
        if pid is not None:
            deadline = clock.monotonic() + timeout_secs
            while running_orchestrator(state_dir) is not None:
                if clock.monotonic() > deadline:
                    raise SupervisorError(
                        f"the orchestrator (pid {pid}) did not stop within {timeout_secs:g} s",
                        hint=f"see `colo logs` and `colo status`; `kill -9 {pid}` then `colo down` cleans up",
                    )
                clock.sleep(POLL_SECS)
            return Stopped(pid, [])
    if pid is not None and pid < 0:
        raise SupervisorError(f"the state dir {state_dir} is locked by a process without a pid file")
    return Stopped(None, stop_leftovers(state_dir))


def stop_leftovers(
    state_dir: Path,
    *,
    stop_wait_secs: float = 10.0,
    clock: Clock = SYSTEM_CLOCK,
    mps_control: object | None = None,
) -> list[str]:
    """After an orchestrator died: stop the agents the store says are still running (same pid AND start
    time; SIGTERM, then SIGKILL after ``stop_wait_secs``) and quit the MPS daemons colo started.

    Returns lines describing what was done. Raises SupervisorError/MpsError when something survives.
    """
    from colo.launch.runner import ProcessRunner
    from colo.supervise.snapshots import EventKind
    from colo.supervise.state import AgentState
    from colo.supervise.store import Store

    paths = StateDirPaths(Path(state_dir))
    store = Store.open_existing(paths.db)
    if store is None:
        return []
    done: list[str] = []
    runner = ProcessRunner()
    try:
        live = []
        for rec in store.agents():
            s = rec.status
            handle = runner.adopt(s.pid, rec.start_time) if s.pid and rec.start_time is not None else None
            if handle is not None:
                runner.signal(handle, int(signal.SIGTERM))
                live.append((rec, handle))
        deadline = clock.monotonic() + stop_wait_secs
        while live and clock.monotonic() < deadline and any(runner.poll(h) is None for _, h in live):
            clock.sleep(0.1)
        for rec, handle in live:
            how = "stopped"
            if runner.poll(handle) is None:
                runner.signal(handle, int(signal.SIGKILL))
                how = "killed"
            done.append(f"{rec.status.name}: {how} pid {handle.pid}")
            store.add_event(clock.wall(), EventKind.STOPPED, rec.status.name, f"colo down (no orchestrator): {how}")
        for rec in store.agents():
            if rec.status.pid or rec.status.state in (
                AgentState.STARTING,
                AgentState.RUNNING,
                AgentState.STOPPING,
                AgentState.BACKOFF,
            ):
                from dataclasses import replace

                store.save_agent(
                    replace(rec, status=replace(rec.status, state=AgentState.STOPPED, pid=None), start_time=None)
                )
        from colo.gpu.mps.control import MpsControl
        from colo.supervise.fleet import NodeFleet

        control = mps_control if isinstance(mps_control, MpsControl) else None
        fleet = NodeFleet.from_record(paths.root, control, store)
        fleet.stop_started(lambda uuid, result: done.append(f"MPS daemon {uuid}: {result.message}"))
        store.delete_meta("orchestrator")
    finally:
        store.close()
    with contextlib.suppress(OSError):
        paths.pid_file.unlink()
    return done


@dataclass(frozen=True)
class RecordedState:
    """What the state dir's store says, for ``colo status`` when no API answers: every agent as last recorded
    (those the plan left out too: STOPPED, reason in ``last_error``), the running orchestrator's pid and
    facts (None when none runs), its API address, and the newest events."""

    orchestrator_pid: int | None
    orchestrator: dict[str, object] | None
    api_url: str | None
    agents: list[AgentStatus]
    events: list[Event]


def recorded_state(state_dir: Path, *, events: int = 10) -> RecordedState | None:
    """Read the store of ``state_dir`` (None when there is none). Raises SupervisorError for a broken one."""
    from colo.supervise.state import AgentState
    from colo.supervise.store import Store

    paths = StateDirPaths(Path(state_dir))
    pid = running_orchestrator(paths.root)
    store = Store.open_existing(paths.db)
    if store is None:
        return None
    try:
        agents = [r.status for r in store.agents()]
        have = {a.name for a in agents}
        for u in store.get_meta("left_out", []):
            if u["agent"] not in have:
                agents.append(
                    AgentStatus(
                        u["agent"],
                        AgentState.STOPPED,
                        None,
                        None,
                        None,
                        u["limit_bytes"],
                        0,
                        u["priority"],
                        0,
                        last_error=f"left out: {u['reason']}",
                    )
                )
        meta = store.get_meta("orchestrator") if pid else None
        api_url = store.get_meta("api_url") if pid else None
        recent = store.events(0, events, tail=True)
    finally:
        store.close()
    return RecordedState(pid, meta, api_url, agents, recent)
