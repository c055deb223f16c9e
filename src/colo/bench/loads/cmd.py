"""A user command as a workload: run it, read the throughput line it prints.

Each request runs the command to completion (again and again until the timed window is over) and parses the
last line of its output that matches ``pattern`` — by default a number followed by ``<unit>/s``, as in
``"throughput: 812.5 tok/s"`` or ``"1234 it/s"``. The instance's throughput is the mean of the rates the
command printed; the request latency is the command's wall time.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any

from colo.bench.loads.base import RequestOutcome

DEFAULT_PATTERN = r"(?P<value>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-z_]+)\s*/\s*s(?:ec)?\b"


def parse_throughput(text: str, pattern: str = DEFAULT_PATTERN) -> tuple[float, str] | None:
    """The last match of ``pattern`` in ``text`` as (value per second, unit); None when nothing matches.

    ``pattern`` needs a group named ``value`` (else the first group); a group named ``unit`` is optional.
    Raises ValueError for a pattern that does not compile.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"throughput pattern {pattern!r} does not compile: {exc}") from exc
    last = None
    for m in regex.finditer(text):
        last = m
    if last is None:
        return None
    groups = last.groupdict()
    raw = groups.get("value") or (last.group(1) if regex.groups else last.group(0))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    unit = groups.get("unit") or "item"
    return value, unit


class CommandWorkload:
    """Runs ``command`` (argv list, or a string split like a shell would) and parses its throughput line."""

    unit = "item"

    def __init__(self, command: list[str] | str, pattern: str = DEFAULT_PATTERN, timeout_secs: float = 600.0) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("cmd workload needs a command")
        parse_throughput("", pattern)  # validate the pattern now
        self.pattern = pattern
        self.timeout_secs = timeout_secs

    def prepare(self) -> dict[str, Any]:
        return {"command": self.argv, "pattern": self.pattern}

    def request(self) -> RequestOutcome:
        try:
            done = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout_secs, check=False)
        except FileNotFoundError as exc:
            raise RuntimeError(f"command not found: {self.argv[0]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"command ran past {self.timeout_secs} s: {shlex.join(self.argv)}") from exc
        output = (done.stdout or "") + "\n" + (done.stderr or "")
        if done.returncode != 0:
            raise RuntimeError(
                f"command exited with status {done.returncode}: {shlex.join(self.argv)}\n{output[-1000:]}"
            )
        parsed = parse_throughput(output, self.pattern)
        if parsed is None:
            raise RuntimeError(
                f"no throughput line matching {self.pattern!r} in the output of {shlex.join(self.argv)}:\n"
                f"{output[-1000:]}"
            )
        value, unit = parsed
        self.unit = unit
        return RequestOutcome(0.0, {"reported_per_sec": value})

    def close(self) -> None:
        return None
