"""Placement: which GPU each agent goes on. Deterministic, pure, O(A log G) for unpinned agents.

Order: high priority first, then larger limits, then name. ``binpack`` takes the GPU with the least free room
that still fits (best fit); ``spread`` the GPU with the most. Ties go to the GPU listed first. A GPU at the MPS
client cap takes no more agents.

A running colo plans again (``colo apply``, a reload, a rollback) with each agent's GPU now as its ``keep``: an
agent stays on that GPU while it may (its pin allows it) and still fits there (room and the client cap, in
placement order), whatever the strategy would choose afresh — so moving one agent (a pin) or resizing one
never reshuffles the rest, and only the agents whose placement really changes restart.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from colo import units

PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}


@dataclass(frozen=True)
class Request:
    """An agent asking for ``limit_bytes`` on one of ``candidates`` (None: any GPU); ``keep``: the GPU it runs
    on now (position), which it keeps while it may and fits there (None: place it afresh)."""

    name: str
    priority: str
    limit_bytes: int
    candidates: tuple[int, ...] | None
    keep: int | None = None


@dataclass(frozen=True)
class Outcome:
    """Where each agent went (position in the slot list) and, for those left out, why."""

    placed: dict[str, int]
    refused: dict[str, str]
    oversubscribed: tuple[str, ...]


def placement_order(requests: Sequence[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: (PRIORITY_RANK[r.priority], -r.limit_bytes, r.name))


def place(
    requests: Sequence[Request],
    capacity_bytes: Sequence[int],
    labels: Sequence[str],
    *,
    strategy: Literal["binpack", "spread"] = "binpack",
    max_clients: int = 48,
    allow_oversubscription: bool = False,
) -> Outcome:
    """Place ``requests`` on GPUs of ``capacity_bytes`` (free room each, already less any reserve)."""
    free = list(capacity_bytes)
    clients = [0] * len(free)
    # Open GPUs sorted by (free, position) for binpack, (-free, position) for spread.
    sign = 1 if strategy == "binpack" else -1
    open_: list[tuple[int, int]] = sorted((sign * f, i) for i, f in enumerate(free))
    placed: dict[str, int] = {}
    refused: dict[str, str] = {}
    over: list[str] = []

    def take(i: int, need: int) -> None:
        k = bisect.bisect_left(open_, (sign * free[i], i))
        del open_[k]
        free[i] -= need
        clients[i] += 1
        if clients[i] < max_clients:
            bisect.insort(open_, (sign * free[i], i))

    def refuse(req: Request, pool: Sequence[int]) -> None:
        room = [i for i in pool if clients[i] < max_clients]
        if not room:
            refused[req.name] = (
                f"{req.name} needs {units.format_size(req.limit_bytes)}; every eligible GPU already has "
                f"{max_clients} MPS clients (policy.max_clients_per_gpu)"
            )
            return
        best = max(room, key=lambda i: (free[i], -i))
        refused[req.name] = (
            f"{req.name} needs {units.format_size(req.limit_bytes)}; largest free: "
            f"{units.format_size(max(free[best], 0))} on {labels[best]}"
        )

    def kept(req: Request) -> int | None:
        """``req.keep`` when the agent may stay there (its pin allows it) and still fits; else None."""
        i = req.keep
        if i is None or not 0 <= i < len(free) or (req.candidates is not None and i not in req.candidates):
            return None
        return i if clients[i] < max_clients and free[i] >= req.limit_bytes else None

    for req in placement_order(requests):
        need = req.limit_bytes
        stay = kept(req)
        if stay is not None:
            chosen = stay
        elif req.candidates is not None:
            room = [i for i in req.candidates if clients[i] < max_clients]
            fitting = [i for i in room if free[i] >= need]
            if fitting:
                key = (lambda i: (free[i], i)) if strategy == "binpack" else (lambda i: (-free[i], i))
                chosen = min(fitting, key=key)
            elif allow_oversubscription and room:
                chosen = min(room, key=lambda i: (-free[i], i))
                over.append(req.name)
            else:
                refuse(req, req.candidates)
                continue
        else:
            if not open_:
                refuse(req, range(len(free)))
                continue
            if strategy == "binpack":
                k = bisect.bisect_left(open_, (need, -1))
                chosen = open_[k][1] if k < len(open_) else -1
            else:
                chosen = open_[0][1] if -open_[0][0] >= need else -1
            if chosen < 0:
                if not allow_oversubscription:
                    refuse(req, range(len(free)))
                    continue
                chosen = open_[-1][1] if strategy == "binpack" else open_[0][1]
                over.append(req.name)
        take(chosen, need)
        placed[req.name] = chosen
    return Outcome(placed, refused, tuple(over))
