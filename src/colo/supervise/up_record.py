"""What ``colo up`` leaves in the state dir's store besides the agents, and what it reports.

:class:`UpResult` is what :meth:`~colo.supervise.orchestrator.Orchestrator.up` did; the store's
``orchestrator`` record (pid, state dir, config file, which GPUs run MPS, the API's address) and its
``left_out`` record (agents this node does not run) let ``colo status`` answer without the API.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo.plan.types import Unplaced
from colo.spec.config import ColoConfig
from colo.supervise.snapshots import EventKind, EventSink
from colo.supervise.store import Store

_ORCHESTRATOR_KEY = "orchestrator"


@dataclass(frozen=True)
class UpResult:
    """What ``up`` did: agents started and adopted, agents left out (with reasons), MPS daemons started."""

    started: list[str]
    adopted: list[str]
    left_out: list[Unplaced]
    daemons_started: list[str]
    daemons_adopted: list[str]
    mps: bool
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "adopted": self.adopted,
            "left_out": [{"agent": u.agent, "priority": u.priority, "reason": u.reason} for u in self.left_out],
            "daemons_started": self.daemons_started,
            "daemons_adopted": self.daemons_adopted,
            "mps": self.mps,
            "warnings": self.warnings,
        }


def daemon_events(event: EventSink, started: Sequence[str], adopted: Sequence[str]) -> None:
    """One event per MPS daemon ``up`` started or adopted."""
    for uuid in started:
        event(EventKind.DAEMON, None, f"started the MPS daemon of {uuid}", uuid)
    for uuid in adopted:
        event(EventKind.DAEMON, None, f"adopted the running MPS daemon of {uuid}", uuid)


def record_orchestrator(
    store: Store, state_dir: Path, config_path: Path | None, config: ColoConfig, mps_gpus: Sequence[str]
) -> None:
    """Record this orchestrator (this process) in the store: ``colo status`` reads it."""
    store.set_meta(
        _ORCHESTRATOR_KEY,
        {
            "pid": os.getpid(),
            "state_dir": str(state_dir),
            "config_path": str(config_path) if config_path else None,
            "mps": bool(mps_gpus),
            "mps_gpus": list(mps_gpus),
            "api": {"host": config.api.host, "port": config.api.port},
        },
    )


def record_mps(store: Store, mps_gpus: Sequence[str]) -> None:
    """After an apply: which GPUs run MPS now."""
    meta = store.get_meta(_ORCHESTRATOR_KEY, None)
    if isinstance(meta, dict):
        store.set_meta(_ORCHESTRATOR_KEY, {**meta, "mps": bool(mps_gpus), "mps_gpus": list(mps_gpus)})


def forget_orchestrator(store: Store) -> None:
    """``down``: no orchestrator runs any more."""
    store.delete_meta(_ORCHESTRATOR_KEY)


def record_left_out(store: Store, left_out: Sequence[Unplaced]) -> None:
    """Keep the agents this node does not run in the store, so ``colo status`` reports them too."""
    store.set_meta(
        "left_out",
        [{"agent": u.agent, "priority": u.priority, "limit_bytes": u.limit_bytes, "reason": u.reason} for u in left_out],
    )
