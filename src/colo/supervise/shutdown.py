"""How ``colo down`` stops the supervised agents: MPS ``terminate_client`` and the stop signal (the
supervisor's :meth:`~colo.supervise.supervisor.Supervisor.stop_all`), a wait bounded by the agents'
``stop_wait``, then SIGKILL for whatever is left, so nothing of colo's outlives ``down``.
"""

from __future__ import annotations

import signal
import threading

from colo.clock import Clock
from colo.launch.runner import Runner
from colo.supervise.snapshots import EventKind
from colo.supervise.supervisor import Supervisor

#: Seconds beyond the longest ``stop_wait`` before the agents still running are killed.
GRACE_SECS = 5.0


def _tick_until_down(sup: Supervisor, lock: threading.RLock, clock: Clock, deadline: float) -> None:
    while True:
        with lock:
            sup.tick()
            if sup.all_down():
                return
        if clock.monotonic() >= deadline:
            return
        clock.sleep(0.1)


def stop_agents(
    sup: Supervisor, runner: Runner, lock: threading.RLock, clock: Clock, timeout_secs: float | None = None
) -> list[str]:
    """Stop every agent of ``sup`` (``lock`` held around each pass, so the API never sees half a tick); wait
    at most ``timeout_secs`` (default: the longest ``stop_wait`` + :data:`GRACE_SECS`), then SIGKILL the
    rest and wait 5 s more. Records one event; returns the agents that were killed."""
    with lock:
        sup.stop_all()
    limit = timeout_secs
    if limit is None:
        limit = max((a.setup.rules.stop_wait_secs for a in sup.agents.values()), default=0.0) + GRACE_SECS
    _tick_until_down(sup, lock, clock, clock.monotonic() + limit)
    left = [a for a in sup.agents.values() if a.handle is not None]
    for a in left:  # past every stop_wait: make sure nothing of ours outlives `down`
        if a.handle is not None:
            runner.signal(a.handle, int(signal.SIGKILL))
    if left:
        _tick_until_down(sup, lock, clock, clock.monotonic() + GRACE_SECS)
    names = [a.name for a in left]
    sup.event(EventKind.STOPPED, None, "colo down: agents stopped" + (f" (SIGKILL: {', '.join(names)})" if left else ""))
    return names
