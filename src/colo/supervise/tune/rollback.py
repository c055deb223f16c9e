"""The tuned-limit rollback: an agent that ran out of memory under a limit ``colo tune`` set gets the limit it
had before. Its entry in ``tuned_limits.json`` is marked rolled back — decided and written under the file's
lock (:func:`colo.supervise.tune.limits_file.update`), so a ``colo tune --apply`` at the same moment cannot
undo it — and the orchestrator then plans again, the plan now giving the agent the policy's limit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from colo import units
from colo.errors import ColoError
from colo.plan.types import AgentPlan
from colo.supervise.tune import formula, limits_file


def mark_rolled_back(path: Path, ap: AgentPlan, running_limit_bytes: int, now_wall: float) -> int | None:
    """``ap`` (the plan in force) ran out of memory under ``running_limit_bytes``: when that limit is a tuned
    one below the limit it replaced, mark its entry rolled back (at wall time ``now_wall``) and return the
    limit it replaced; else None (the out-of-memory error is the agent's own; nothing is written). Raises
    ConfigError (a corrupt file)."""
    restore: int | None = None

    def change(entries: dict[str, limits_file.TunedEntry]) -> dict[str, limits_file.TunedEntry]:
        nonlocal restore
        entry = entries.get(ap.name)
        if entry is None:
            return entries
        rolled = entry.rolled_back_at is not None
        restore = formula.rollback_limit(ap.limit_source, running_limit_bytes, entry.previous_limit_bytes, rolled)
        if restore is not None:
            entries[ap.name] = replace(entry, rolled_back_at=now_wall)
        return entries

    limits_file.update(path, change)
    return restore


def event_text(tuned_bytes: int, restored_bytes: int, error: ColoError | None) -> str:
    """The rollback's event: the tuned limit it ran out of memory under, the limit restored; ``error``: the
    plan could not be made again (the entry is marked all the same: the next apply restores the limit)."""
    tuned = f"out of memory under its tuned limit {units.format_size(tuned_bytes)}"
    if error is not None:
        return f"{tuned}: marked rolled back, but the plan could not be made again ({error}); the next apply restores it"
    return f"{tuned}: restored its limit of {units.format_size(restored_bytes)} (only agents whose limit moved restart)"
