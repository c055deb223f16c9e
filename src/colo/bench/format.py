"""How bench reports and the ``colo bench`` views write numbers: one place for rates, percentages,
milliseconds, ratios, sizes and Markdown tables. A missing or non-finite value is written ``–``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from colo import units
from colo.bench.results import PointResult

MISSING = "–"


def num(value: float | None, digits: int = 1) -> str:
    """``1,234`` from 1000 up, else ``digits`` decimals: ``12.3``."""
    if value is None or not math.isfinite(value):
        return MISSING
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def pct(fraction: float | None) -> str:
    """A fraction as a whole percentage: 0.874 -> ``87 %``."""
    return MISSING if fraction is None or not math.isfinite(fraction) else f"{100 * fraction:.0f} %"


def ms(value_secs: float | None) -> str:
    """Seconds as milliseconds, to 3 significant figures or so: ``4.25``, ``42.5``, ``425``."""
    if value_secs is None or not math.isfinite(value_secs):
        return MISSING
    millis = value_secs * 1000
    return f"{millis:.2f}" if millis < 10 else f"{millis:.1f}" if millis < 100 else f"{millis:.0f}"


def ratio(value: float | None) -> str:
    """``1.72×``."""
    return MISSING if value is None else f"{value:.2f}×"


def size(value_bytes: Any) -> str:
    """A byte count as ``1.5 GiB`` (:func:`colo.units.format_size`); anything not a number is missing."""
    return units.format_size(int(value_bytes)) if isinstance(value_bytes, (int, float)) else MISSING


def sm_busy(point: PointResult) -> str:
    """The point's mean SM utilisation (NVML, device level) as ``63 %``; missing without samples."""
    sm = point.gpu.sm_util_mean_pct if point.gpu is not None and point.gpu.samples else None
    return f"{sm:.0f} %" if sm is not None else MISSING


def point_line(point: PointResult) -> str:
    """One measured point in a line, as progress shows it:
    ``mps N=2: aggregate 1,234.5 seq/s, individual 617.3, p50 4.25 ms, SM busy 63 %``."""
    lat = point.latency
    p50 = f"{1000 * lat.p50_secs:.2f} ms" if math.isfinite(lat.p50_secs) else MISSING
    sm = point.gpu.sm_util_mean_pct if point.gpu else None
    sm_text = f", SM busy {sm:.0f} %" if sm is not None else ""
    return (
        f"{point.mode} N={point.concurrency}: aggregate {point.aggregate_per_sec:,.1f} {point.unit}/s, "
        f"individual {point.individual_per_sec:,.1f}, p50 {p50}{sm_text}"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the header, the rule, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
