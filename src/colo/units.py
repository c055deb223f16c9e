"""Sizes and percentages: parsed once at the edge, integers (bytes, percent) inside, formatted in views.

Units (case-insensitive):

- binary: ``KiB MiB GiB TiB`` (powers of 1024) and MPS's bare ``K M G T``, which CUDA MPS reads as binary;
- SI: ``KB MB GB TB`` (powers of 1000) and ``B``.

The seed format's ``*_gb`` fields are GiB (its "24 GB" RTX 3090 is 24 GiB of memory): :func:`gib` and
:func:`from_gib` convert them.
"""

from __future__ import annotations

import math
import re

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
    "tib": TIB,
    "k": KIB,
    "m": MIB,
    "g": GIB,
    "t": TIB,
}

# ASCII digits only: Python's \d and float() also read Arabic-Indic "١٢" or full-width "１２" as 12, which a
# reader of the file would not expect a size to be.
_SIZE_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$", re.ASCII)


def _non_ascii_digit(text: str) -> str | None:
    for ch in text:
        if ch.isdigit() and not ch.isascii():
            return ch
    return None

# A single GPU with more than 1 PiB of memory is a typo, not a plan.
MAX_SIZE_BYTES = 1024**5


def parse_size(text: str | int) -> int:
    """Parse ``"1.5GiB"``, ``"512MiB"``, ``"0.5GB"``, ``"2G"`` into bytes (rounded up to a whole byte).

    Integers are taken as bytes. Raises ``ValueError`` (with the accepted units) for a missing or unknown
    unit, a negative or absurd value.
    """
    if isinstance(text, bool):
        raise ValueError("a size must be a string with a unit, such as '512MiB' or '1.5GiB'")
    if isinstance(text, int):
        value_bytes = text
    else:
        m = _SIZE_RE.match(str(text))
        odd = _non_ascii_digit(str(text))
        if odd is not None:
            raise ValueError(f"{text!r} has the digit {odd!r} (U+{ord(odd):04X}); write sizes with ASCII digits 0-9")
        if not m:
            raise ValueError(f"{text!r} is not a size; write a number and a unit, such as '512MiB' or '1.5GiB'")
        number, unit = m.group(1), m.group(2).lower()
        if not unit:
            raise ValueError(
                f"{text!r} has no unit; write e.g. '{number}GiB' (binary) or '{number}GB' (SI, 10^9 bytes)"
            )
        if unit not in _UNITS:
            raise ValueError(
                f"unknown unit {m.group(2)!r} in {text!r}; use B, KiB, MiB, GiB, TiB (binary), "
                "KB, MB, GB, TB (SI) or MPS's K, M, G, T (binary)"
            )
        value = float(number)
        if not math.isfinite(value) or not math.isfinite(value * _UNITS[unit]):
            raise ValueError(f"{text!r} is not a finite size")
        if value < 0:
            raise ValueError(f"{text!r} is negative; a size must be 0 or more")
        if value * _UNITS[unit] > MAX_SIZE_BYTES:
            raise ValueError(f"{text!r} is over 1 PiB; is the unit right?")
        value_bytes = math.ceil(value * _UNITS[unit] - 1e-6)
    if value_bytes < 0:
        raise ValueError(f"{text!r} is negative; a size must be 0 or more")
    if value_bytes > MAX_SIZE_BYTES:
        raise ValueError(f"{text!r} is over 1 PiB; is the unit right?")
    return value_bytes


def round_up(value: int, step: int) -> int:
    """Round ``value`` up to a multiple of ``step`` (``step`` <= 1 leaves it unchanged)."""
    if step <= 1:
        return value
    return -(-value // step) * step


def gib(value_bytes: int, ndigits: int = 3) -> float:
    """Bytes as GiB, rounded for the seed format's ``*_gb`` fields."""
    return round(value_bytes / GIB, ndigits)


def from_gib(value_gib: float) -> int:
    """GiB (a seed-format ``*_gb`` value) as bytes."""
    return round(value_gib * GIB)


def mps_limit(value_bytes: int) -> str:
    """A limit as MPS wants it: whole MiB (rounded up, never below the plan), e.g. ``"1536M"``."""
    return f"{-(-value_bytes // MIB)}M"


def format_size(value_bytes: int, precision: int = 1) -> str:
    """Human form in binary units: ``format_size(1536 * MIB) == "1.5 GiB"``."""
    if value_bytes < KIB:
        return f"{value_bytes} B"
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value_bytes >= factor:
            return f"{value_bytes / factor:.{precision}f} {unit}"
    return f"{value_bytes} B"  # pragma: no cover - unreachable


def format_size_exact(value_bytes: int) -> str:
    """Shortest exact unit string that :func:`parse_size` reads back to the same bytes."""
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value_bytes and value_bytes % factor == 0:
            return f"{value_bytes // factor}{unit}"
    return f"{value_bytes}B"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h|d|w)?\s*$", re.ASCII | re.IGNORECASE)
_DURATION_SECS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | int | float) -> float:
    """Parse ``"90s"``, ``"15m"``, ``"3h"``, ``"7d"``, ``"1w"`` (a bare number is seconds) into seconds.

    Raises ``ValueError`` naming the accepted units for anything else (negative, empty, unknown unit).
    """
    if isinstance(text, bool):
        raise ValueError("a duration must be a number with a unit, such as '90s', '15m', '3h' or '7d'")
    if isinstance(text, int | float):
        value = float(text)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '15m', '3h' or '7d'")
        return value
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '15m', '3h' or '7d' (units ms s m h d w)")
    unit = (match.group(2) or "s").lower()
    return float(match.group(1)) * _DURATION_SECS[unit]


def format_duration(secs: float) -> str:
    """Short human form: ``45 s``, ``12 min``, ``3.5 h``, ``7 d``."""
    if secs < 120:
        return f"{secs:.0f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    if secs < 172800:
        return f"{secs / 3600:.1f} h".replace(".0 h", " h")
    return f"{secs / 86400:.1f} d".replace(".0 d", " d")
