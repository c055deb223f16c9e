"""``policy.mps`` at run time: the GPUs of this node whose MPS daemon runs, following the plan.

The plan decides per GPU whether MPS runs (``colo.plan.mps``). :class:`MpsSwitch` keeps the orchestrator's fleet
in step with it: on an apply, :meth:`MpsSwitch.switch` starts (or adopts) the daemon of each GPU that switches
to MPS *before* its agents restart as its clients; a GPU that switches to time-slicing is *retiring* until none
of its agents still runs as an MPS client, and then :meth:`MpsSwitch.tick` quits the daemon colo started there
(an adopted one is left running). :func:`mps_events` says which GPUs run MPS and why (on ``up``), or which
switched (after an apply).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from colo.errors import ColoError
from colo.plan import AgentPlan, Plan
from colo.supervise import planning
from colo.supervise.fleet import NodeFleet
from colo.supervise.recovery.mps_hooks import FleetHooks
from colo.supervise.snapshots import EventKind, EventSink


def mps_events(event: EventSink, p: Plan, mine: Sequence[AgentPlan], before: Plan | None = None) -> None:
    """One event per GPU of this node with agents: whether it runs MPS and why (``before`` None: on ``up``),
    or, after an apply, for each GPU whose decision changed."""
    used = {ap.gpu for ap in mine if ap.gpu is not None}
    old = {g.gpu: g.mps for g in before.gpus} if before is not None else {}
    for g in p.gpus:
        if g.gpu not in used and not (before is not None and old.get(g.gpu)):
            continue
        if before is not None and old.get(g.gpu, False) == g.mps:
            continue
        verb = "" if before is None else ("switches to MPS: " if g.mps else "switches to time-slicing: ")
        event(EventKind.MPS_MODE, None, f"{g.gpu.label}: {verb}{g.mps_reason}", g.gpu.uuid)


def mps_labels(p: Plan, mine: Sequence[AgentPlan]) -> list[str]:
    """This node's GPUs that run MPS under ``p`` (``gpu0``), for ``colo status``."""
    want = set(planning.mps_gpu_uuids(p, mine))
    return sorted({ap.gpu.label for ap in mine if ap.gpu is not None and ap.gpu.uuid in want})


class MpsSwitch:
    """The fleet of this node following the plan's MPS decisions (see the module). ``hooks()`` is the MPS
    watch (daemons it must start or stop watching)."""

    def __init__(
        self,
        fleet: NodeFleet,
        *,
        hooks: Callable[[], FleetHooks | None],
    ) -> None:
        self.fleet = fleet
        self._hooks = hooks
        self.retiring: set[str] = set()  # GPUs switched to time-slicing whose daemon is still up

    def keep_leftovers(self, mps_uuids: Collection[str], on_gpus: Collection[str]) -> None:
        """On ``up``: daemons an earlier orchestrator started on GPUs of ours that now run without MPS. Their
        agents (adopted) roll out of them, then the daemons quit (:meth:`tick`)."""
        for uuid in sorted(set(self.fleet.recorded()) - set(mps_uuids)):
            if uuid in on_gpus:
                self.fleet.take_in(uuid)
                self.retiring.add(uuid)

    def switch(self, p: Plan, mine: Sequence[AgentPlan], event: EventSink) -> list[str]:
        """An apply: start (or adopt) the daemon of each GPU that switches to MPS under ``p``; mark those that
        switch to time-slicing retiring. Returns the GPUs whose daemon was started. Raises MpsError (the
        daemons started here are stopped again)."""
        want = set(planning.mps_gpu_uuids(p, mine))
        have = set(self.fleet.uuids())
        started: list[str] = []
        hooks = self._hooks()
        try:
            for uuid in sorted(want - have):
                if self.fleet.start(uuid):
                    started.append(uuid)
                    event(EventKind.DAEMON, None, f"started the MPS daemon of {uuid}", uuid)
                else:
                    event(EventKind.DAEMON, None, f"adopted the running MPS daemon of {uuid}", uuid)
                if hooks is not None:
                    hooks.watch(uuid)
        except ColoError:
            for uuid in sorted(want - have):
                self.drop(uuid, stop=uuid in started)
            raise
        self.retiring -= want  # needed again before its daemon was stopped
        self.retiring |= have - want
        return started

    def drop(self, uuid: str, *, stop: bool) -> None:
        """Leave GPU ``uuid`` out of the fleet; quit its daemon when colo started it (``stop``)."""
        hooks = self._hooks()
        if hooks is not None:
            hooks.unwatch(uuid)  # its daemon quitting is no fault
        self.fleet.drop(uuid, stop=stop)

    def tick(self, settling_on: Callable[[str], bool], event: EventSink) -> None:
        """Retiring GPUs: once none of their agents still runs as an MPS client (``settling_on(uuid)`` false:
        the rolling restart is through), quit the daemon colo started there (an adopted one is left running)."""
        for uuid in sorted(self.retiring):
            if settling_on(uuid):
                continue
            self.retiring.discard(uuid)
            if uuid not in self.fleet.uuids():
                continue
            ours = self.fleet.ours(uuid)
            try:
                self.drop(uuid, stop=ours)
            except ColoError as exc:
                event(EventKind.DAEMON, None, f"could not stop the MPS daemon of {uuid}: {exc}", uuid)
                continue
            what = "stopped the MPS daemon" if ours else "no longer uses the (adopted) MPS daemon"
            event(EventKind.DAEMON, None, f"{what} of {uuid}: its GPU runs time-sliced now", uuid)
