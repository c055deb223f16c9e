"""One clock convention (issue #11): code that reads or waits on time takes a ``colo.clock.Clock`` named
``clock`` (default ``SYSTEM_CLOCK``), never a bare callable. This greps ``src/colo`` for the old ways back in."""

from __future__ import annotations

import re
from pathlib import Path

from colo.clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock

SRC = Path(__file__).resolve().parents[2] / "src" / "colo"

#: (what it is, the pattern). Time sources and sleeps passed as plain functions, or time's functions used as
#: values (a default, a keyword argument, an assignment) rather than called.
FORBIDDEN = (
    (
        "a time source typed as a bare callable",
        re.compile(r"\b(clock|now|monotonic|wall|time|timer|today)\s*:\s*Callable\[\[\],\s*(float|int|str|datetime)\]"),
    ),
    ("a sleep typed as a bare callable", re.compile(r"\b(sleep|wait|pause)\s*:\s*Callable\[\[float\],\s*None\]")),
    (
        "a function of time used as a value (a default or an argument)",
        re.compile(r"=\s*time\.(monotonic|time|sleep|perf_counter)(_ns)?\b(?!\s*\()"),
    ),
)


def offences(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, the line) for each forbidden spelling in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN:
            if pattern.search(line):
                found.append((number, what, line.strip()))
    return found


def test_the_patterns_catch_the_old_spellings() -> None:
    old = [
        "    clock: Callable[[], float] = time.monotonic,",
        "        self, poller, monotonic: Callable[[], float], *, poll_secs: float = 1.0",
        "    now: Callable[[], str] = utc_now,",
        "    sleep: Callable[[float], None],",
        "    sleep: Any = time.sleep,",
        "        for text in logs.follow(agent, sleep=time.sleep, keep_going=lambda: True):",
        "        clock: Callable[[], float] = time.time,",
        "        now: Callable[[], datetime] | None = None,",
        "    clock = time.perf_counter",
    ]
    assert all(offences(line) for line in old), [line for line in old if not offences(line)]
    fine = [
        "    clock: Clock = SYSTEM_CLOCK,",
        "    deadline = time.monotonic() + 10.0",
        "    started = time.time()",
        "        clock.sleep(0.1)",
        "    wait_key: Callable[[float], str | None], clock: Clock = SYSTEM_CLOCK,",
    ]
    assert not any(offences(line) for line in fine)


def test_no_bare_time_callables_in_src() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50, f"src/colo not found at {SRC}"
    found = [
        f"{path.relative_to(SRC.parent)}:{number}: {what}: {line}"
        for path in files
        if path.name != "clock.py"  # it wraps time's functions, and says what not to do in its docstring
        for number, what, line in offences(path.read_text(encoding="utf-8"))
    ]
    assert not found, "take a colo.clock.Clock named `clock` (default SYSTEM_CLOCK) instead:\n" + "\n".join(found)


def test_the_clocks_are_clocks() -> None:
    clocks: list[Clock] = [SYSTEM_CLOCK, SystemClock(), FakeClock()]
    for clock in clocks:
        assert isinstance(clock.monotonic(), float) and isinstance(clock.wall(), float)
    fake = FakeClock(start=5.0, wall_start=100.0)
    fake.sleep(2.0)
    assert (fake.monotonic(), fake.wall()) == (7.0, 102.0)
