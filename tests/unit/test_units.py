from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo import units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5GiB", 1536 * units.MIB),
        ("512MiB", 512 * units.MIB),
        ("0.5GB", 500_000_000),
        ("2G", 2 * units.GIB),
        ("1536M", 1536 * units.MIB),
        ("100 B", 100),
        ("1 kib", 1024),
        (4096, 4096),
    ],
)
def test_parse_size_units(text: str | int, expected: int) -> None:
    assert units.parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [("512", "no unit"), ("-1GiB", "negative"), ("3 parsecs", "unknown unit"), ("", "not a size"),
     ("2PiB", "unknown unit"), ("9000TiB", "over 1 PiB"), ("GiB", "not a size")],
)
def test_parse_size_rejects(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        units.parse_size(text)


@given(st.integers(min_value=0, max_value=units.MAX_SIZE_BYTES))
def test_exact_format_round_trips(value: int) -> None:
    assert units.parse_size(units.format_size_exact(value)) == value


@given(st.integers(min_value=0, max_value=1024 * 1024), st.sampled_from(["KiB", "MiB", "GiB"]))
def test_binary_units_round_trip(n: int, unit: str) -> None:
    value = units.parse_size(f"{n}{unit}")
    assert units.parse_size(units.format_size_exact(value)) == value
    assert value == n * {"KiB": units.KIB, "MiB": units.MIB, "GiB": units.GIB}[unit]


@given(st.integers(min_value=1, max_value=10 * units.TIB))
def test_mps_limit_never_below(value: int) -> None:
    text = units.mps_limit(value)
    assert text.endswith("M")
    assert int(text[:-1]) * units.MIB >= value > (int(text[:-1]) - 1) * units.MIB


def test_round_up_and_gib() -> None:
    assert units.round_up(1, 128) == 128
    assert units.round_up(256, 128) == 256
    assert units.gib(units.from_gib(0.5)) == 0.5
    assert units.format_size(1536 * units.MIB) == "1.5 GiB"
