"""The values of ``colo bench`` options, parsed once: concurrency lists, modes, per-instance MPS limits, and
an earlier run's ``bench.json``. Every function raises UsageError (or ConfigError for a file) naming the
option and the value, so the CLI exits 2 with that sentence.
"""

from __future__ import annotations

from pathlib import Path

from colo import units
from colo.bench.modes import Mode, check_modes
from colo.bench.mps import MpsClientLimits
from colo.bench.results import BenchResult
from colo.errors import ConfigError, UsageError

#: The most instances (or clients) one point may run.
MAX_CONCURRENCY = 64


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4), each 1..:data:`MAX_CONCURRENCY`; ``what`` names the option. Raises UsageError."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"{what} {text!r}: write whole numbers separated by commas, e.g. 1,2,4,8") from exc
    if not values or any(v < 1 or v > MAX_CONCURRENCY for v in values):
        raise UsageError(f"{what} {text!r}: each value must be 1..{MAX_CONCURRENCY}")
    return values


def _split(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def parse_modes(text: str) -> tuple[Mode, ...]:
    """``--mode timeslice,mps`` of a workload run (or ``external``); none named: time-slicing. Raises UsageError."""
    return tuple(check_modes(_split(text) or [Mode.TIMESLICE]))


def parse_agent_modes(text: str) -> tuple[Mode, ...]:
    """``colo bench agents --mode``: timeslice, mps and auto (``colo up --mps auto``), comma-separated; none
    named: time-slicing. Raises UsageError."""
    from colo.bench.agents_run import AGENT_MODES

    modes = _split(text) or [Mode.TIMESLICE]
    for m in modes:
        if m not in AGENT_MODES:
            raise UsageError(f"unknown mode {str(m)!r}; use timeslice, mps, auto or several (timeslice,auto)")
    return tuple(Mode(m) for m in modes)


def parse_limits(thread_pct: str | None, mem_limit: str | None) -> tuple[MpsClientLimits, ...]:
    """``--thread-pct 50`` / ``25,75`` and ``--mem-limit 4GiB`` / ``2GiB,6GiB``: per-instance MPS limits
    (instance i takes the i-th value, cycling). Raises UsageError."""
    pcts: list[int | None] = [None]
    if thread_pct:
        try:
            pcts = [int(v) for v in thread_pct.split(",")]
        except ValueError as exc:
            raise UsageError(f"--thread-pct {thread_pct!r}: write percentages like 50 or 25,75") from exc
        if any(not 1 <= p <= 100 for p in pcts if p is not None):
            raise UsageError(f"--thread-pct {thread_pct!r}: each value must be 1..100")
    mems: list[int | None] = [None]
    if mem_limit:
        try:
            mems = [units.parse_size(v.strip()) for v in mem_limit.split(",")]
        except ValueError as exc:
            raise UsageError(f"--mem-limit {mem_limit!r}: {exc}") from exc
    count = max(len(pcts), len(mems))
    return tuple(
        MpsClientLimits(pinned_mem_limit_bytes=mems[i % len(mems)], active_thread_pct=pcts[i % len(pcts)])
        for i in range(count)
    )


def load_results(path: Path) -> list[BenchResult]:
    """The runs (one or more) of a ``bench.json`` that ``colo bench --out DIR`` wrote. Raises ConfigError naming
    the file."""
    from colo.bench.report import load_json

    try:
        runs = load_json(path.read_text(encoding="utf-8"))
        if not runs:
            raise ValueError("it holds no runs")
        return runs
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"not a colo bench result: {exc}",
            source=str(path),
            hint="pass the bench.json that `colo bench --out DIR` wrote",
        ) from exc

