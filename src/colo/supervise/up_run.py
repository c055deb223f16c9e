"""How ``colo up`` runs: detached (a double fork into a new session, the log file as stdout/stderr) or in the
foreground (signals, the orchestrator's loop), and the watch that reports the agents' first outcome.

The view (``colo.cli.up_cmd``) only prints: it hands in what to say through callbacks. The API server is
started by the caller (the API layer: ``colo.api.background``), never from here — supervise does not import
the API.

- :func:`detach` forks; the parent then waits with :func:`wait_until_held` (the child holds the state dir) and
  :func:`wait_detached_outcome` (the child recorded the first outcome in the store);
- :func:`run_foreground` brings the orchestrator up, starts the first-outcome watch and runs the loop until
  SIGTERM/SIGINT (SIGHUP re-applies the config file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError, SupervisorError
from colo.spec.config import ColoConfig
from colo.supervise.first_outcome import UpOutcome, wait_first_outcomes, wait_secs
from colo.supervise.orchestrator import Orchestrator
from colo.supervise.planning import NodePlan
from colo.supervise.state import AgentState
from colo.supervise.statedir import StateDirPaths, running_orchestrator
from colo.supervise.store import Store
from colo.supervise.up_record import UpResult

#: Store meta key: the first outcome the orchestrator saw (``{"pid": ..., **UpOutcome.to_dict()}``).
FIRST_OUTCOME_KEY = "first_outcome"
#: Seconds the detached parent waits for the child to hold the state dir.
DETACH_START_SECS = 120.0
POLL_SECS = 0.2

#: (text, seconds waited): a progress line.
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class DetachedLog:
    """Where the detached child writes: its log and how much of it earlier runs wrote (``offset``, bytes)."""

    path: Path
    offset: int

    def tail(self, chars: int = 2000) -> str:
        """The last ``chars`` characters the log got past ``offset`` ("" when there is none)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                return fh.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def child_failed(self) -> bool:
        """Whether what the child wrote past ``offset`` is an error."""
        return "error:" in self.tail(4000)


def detach(paths: StateDirPaths) -> DetachedLog | None:
    """Double-fork into a new session. In the parent: the child's log (it goes on to wait). In the child:
    None, with stdin from /dev/null and stdout/stderr appended to ``<state_dir>/logs/orchestrator.log``."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / "orchestrator.log"
    sys.stdout.flush()
    sys.stderr.flush()
    log = DetachedLog(log_path, log_path.stat().st_size if log_path.exists() else 0)
    first = os.fork()
    if first > 0:
        os.waitpid(first, 0)
        return log
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    return None


def wait_until_held(paths: StateDirPaths, log: DetachedLog, clock: Clock = SYSTEM_CLOCK) -> int:
    """The detached child's pid once it holds the state dir. Raises SupervisorError (with the end of its log)
    when it failed first or did not get there within :data:`DETACH_START_SECS`."""
    deadline = clock.monotonic() + DETACH_START_SECS
    while clock.monotonic() < deadline:
        pid = running_orchestrator(paths.root)
        if pid is not None and pid > 0:
            return pid
        if not paths.pid_file.exists() and log.child_failed():
            break
        clock.sleep(POLL_SECS)
    raise SupervisorError(f"the detached orchestrator did not come up; its log {log.path} ends:\n{log.tail()}")


def wait_detached_outcome(
    paths: StateDirPaths, cfg: ColoConfig, pid: int, log: DetachedLog, progress: Progress, clock: Clock = SYSTEM_CLOCK
) -> UpOutcome:
    """Wait for the detached orchestrator ``pid`` to record its agents' first outcome in the store.

    Raises SupervisorError when it stops first (with the end of its log) or reports nothing in time."""
    # The orchestrator's own wait is bounded by the same timeouts; it also has to plan and launch first.
    started = clock.monotonic()
    deadline = started + wait_secs(cfg, list(cfg.agents)) + DETACH_START_SECS
    while clock.monotonic() < deadline:
        store = Store.open_existing(paths.db)
        found = None
        if store is not None:
            try:
                found = store.get_meta(FIRST_OUTCOME_KEY)
                done = sum(1 for r in store.agents() if r.status.state is AgentState.RUNNING)
            finally:
                store.close()
            progress(f"{done} of {len(cfg.agents)} agents RUNNING", clock.monotonic() - started)
        if isinstance(found, dict) and found.get("pid") == pid:
            return UpOutcome.from_dict(found)
        if running_orchestrator(paths.root) != pid:
            raise SupervisorError(
                f"the detached orchestrator (pid {pid}) stopped; its log {log.path} ends:\n{log.tail()}"
            )
        clock.sleep(POLL_SECS)
    raise SupervisorError(
        f"the orchestrator (pid {pid}) is running but reported no outcome of its agents in time",
        hint="`colo status` shows them; `colo down` stops it",
    )


def watch_first_outcome(
    orch: Orchestrator,
    names: Sequence[str],
    stop: threading.Event,
    *,
    progress: Progress,
    report: Callable[[UpOutcome], None],
    failed: Callable[[ColoError], None],
) -> None:
    """Wait (bounded) for the first outcome of ``names`` while the loop supervises them; ``report`` it and
    record it in the store (a detached ``colo up`` reads it there). An error goes to ``failed``: the report
    is a courtesy and never disturbs supervision."""
    try:
        outcome = wait_first_outcomes(
            orch.statuses, names, timeout_secs=wait_secs(orch.config(), names), clock=SYSTEM_CLOCK,
            keep_going=lambda: not stop.is_set(),
            on_progress=lambda done, total, secs: progress(
                f"waiting for the agents' first outcome: {done} of {total}", secs
            ),
        )
        if stop.is_set():
            return
        report(outcome)
        orch.store.set_meta(FIRST_OUTCOME_KEY, {"pid": os.getpid(), **outcome.to_dict()})
    except ColoError as exc:
        failed(exc)


def run_foreground(
    orch_for: Callable[[], Orchestrator],
    planned: NodePlan | None,
    *,
    started: Callable[[Orchestrator, UpResult], Callable[[], None] | None],
    watch: Callable[[Orchestrator, UpResult, threading.Event], None],
) -> UpResult:
    """Install the signal handlers (SIGTERM/SIGINT stop, SIGHUP re-applies the config file), build the
    orchestrator (``orch_for``) and bring it up with ``planned``; ``started(orch, result)`` then runs (the
    view reports, the API layer starts the API and returns how to stop it), ``watch(orch, result, stop)``
    runs in a thread (the first outcome); then the loop runs until stopped, and ``down`` follows.

    Raises ColoError from ``up`` (nothing is left running then)."""
    # Handlers first: a SIGTERM while agents are being launched still ends in an orderly `down`.
    stop = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    orch = orch_for()
    result = orch.up(planned)
    stop_api = started(orch, result)
    with contextlib.suppress(ColoError):
        orch.store.delete_meta(FIRST_OUTCOME_KEY)
    threading.Thread(target=watch, args=(orch, result, stop), name="colo-first-outcome", daemon=True).start()
    try:
        orch.run(stop, reload=reload)
    finally:
        if stop_api is not None:
            stop_api()
        with contextlib.suppress(ColoError):
            orch.store.delete_meta("api_url")
    return result
