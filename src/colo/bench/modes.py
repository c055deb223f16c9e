"""The co-location mode of a benchmark point: the one vocabulary every bench module, report and the CLI use.

A :class:`Mode` is a ``StrEnum``: it is written to the JSON report as its plain value (``"timeslice"``) and a
value read back from a report compares equal to it. What each mode does to the instances' environment is
:func:`colo.bench.mps.colocation_env`'s business; how ``colo bench agents`` starts ``colo up`` for each is
:data:`colo.bench.agents_run.UP_MODE_ARGS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from colo.errors import UsageError


class Mode(StrEnum):
    """How the instances of one point share the GPU."""

    TIMESLICE = "timeslice"  # ordinary CUDA processes, time-sliced by the driver
    MPS = "mps"  # clients of an MPS control daemon colo started for the point
    AUTO = "auto"  # `colo up` with policy.mps: auto (bench agents): MPS only on a GPU that shares
    MERGED = "merged"  # one process doing the work of N (the merged batch): the upper bound
    EXTERNAL = "external"  # HTTP servers measured as they run: their own GPU setup
    BATCHING = "batching"  # `bench servers`: one server with N parallel slots

    @property
    def label(self) -> str:
        """The mode as reports and tables name it (``time-slicing``, ``MPS``, ...)."""
        return LABELS[self]


LABELS: dict[Mode, str] = {
    Mode.TIMESLICE: "time-slicing",
    Mode.MPS: "MPS",
    Mode.AUTO: "mps: auto",
    Mode.MERGED: "merged batch",
    Mode.EXTERNAL: "as served",
    Mode.BATCHING: "batching",
}

#: The modes a workload's ``--mode`` accepts (:func:`colo.bench.mps.colocation_env` sets them up).
RUN_MODES: tuple[Mode, ...] = (Mode.TIMESLICE, Mode.MPS, Mode.EXTERNAL)
#: The modes of a run when ``--mode`` names none, and of ``colo bench agents``'s default.
DEFAULT_MODES: tuple[Mode, ...] = (Mode.TIMESLICE, Mode.MPS)
#: The order of modes in tables and plots (time-slicing first); others follow in name order.
TABLE_ORDER: tuple[Mode, ...] = (Mode.TIMESLICE, Mode.MPS, Mode.AUTO, Mode.EXTERNAL)


def label(mode: str) -> str:
    """The label of ``mode`` (a :class:`Mode` or its value); an unknown value is shown as it is."""
    try:
        return Mode(mode).label
    except ValueError:
        return mode


def check_modes(modes: Iterable[str], allowed: tuple[Mode, ...] = RUN_MODES) -> list[Mode]:
    """``--mode`` values as modes. Raises UsageError naming an unknown (or not ``allowed``) one."""
    out = []
    for m in modes:
        if m not in allowed:
            raise UsageError(f"unknown mode {str(m)!r}; use timeslice, mps or both (timeslice,mps), or external")
        out.append(Mode(m))
    return out
