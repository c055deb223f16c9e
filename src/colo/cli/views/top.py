"""``colo top``'s frame and loop: GPUs, their MPS daemons, and every agent's memory against its limit.

The frame (:func:`render_frame`) is thin: it formats the ``GET /gpu/info`` and ``GET /agents`` documents and
nothing else. Columns are chosen by the terminal's width, most useful first, so an 80-column terminal shows
whole values (``STOPPING``, ``node-a:0``, a pid) rather than every column cut to an ellipsis. User text (agent
and model names, errors) is :class:`rich.text.Text`, never markup, with control characters escaped.

The loop (:class:`TopLoop`) polls, remembers the last good answer and when it came (the clock in the header
shows it), keeps showing that data with a "disconnected, retrying" line while the orchestrator is away, and
quits on ``q``. Time, polling and keys are injected so tests drive it without a terminal or a server.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from colo.cli.common import plain
from colo.clock import SYSTEM_CLOCK, Clock
from colo.errors import ColoError
from colo.units import format_size

STATE_STYLE = {
    "running": "bold green",
    "starting": "cyan",
    "stopping": "cyan",
    "backoff": "yellow",
    "exited": "yellow",
    "stopped": "dim",
    "fatal": "bold red",
}


def bar(used: int | None, total: int | None, width: int = 20) -> Text:
    """``███████░░░ 1.2 GiB / 2.0 GiB``: green below 70 %, yellow below 90 %, red from 90 %."""
    if not total:
        return Text("—", style="dim")
    if used is None:
        return Text("░" * width + f" ? / {format_size(total)}", style="dim")
    frac = max(0.0, used / total)
    filled = min(width, round(frac * width))
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "bold red"
    text = Text()
    text.append("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {format_size(used)} / {format_size(total)}")
    return text


def _num(value: Any, unit: str, fmt: str = "{:.0f}") -> str:
    if value is None:
        return "—"
    return fmt.format(value) + unit


def _t(value: Any, style: str = "") -> Text:
    """User text as a Text (never markup), control characters escaped."""
    return Text(plain("" if value is None else value), style=style)


def _daemon_cell(daemon: Mapping[str, Any] | None) -> Text:
    if not daemon:
        return Text("none", style="dim")
    if not daemon.get("running"):
        return Text("not running", style="yellow")
    if daemon.get("error"):
        return _t(f"error: {daemon['error']}", style="red")
    servers = daemon.get("servers") or []
    if not servers:
        return Text("up, no server yet", style="green")
    parts = Text()
    for i, s in enumerate(servers):
        status = plain(s.get("status", "?"))
        style = "green" if status.upper() == "ACTIVE" else "bold red" if status.upper() == "FAULT" else "yellow"
        if i:
            parts.append(", ")
        parts.append(f"server {s.get('pid')} ")
        parts.append(status, style=style)
        parts.append(f" · {len(s.get('client_pids') or [])} clients")
    return parts


@dataclass(frozen=True)
class Column:
    """One column: header, the width it needs to show whole values, and how much it matters (lower first)."""

    header: str
    min_width: int
    rank: int
    wraps: bool = False  # free text (names, errors) may wrap or be cut; values never are


def choose_columns(columns: Sequence[Column], width: int | None) -> list[Column]:
    """The columns (in their order) that fit ``width``: the least important ones are dropped first."""
    chosen = list(columns)
    if width is None:
        return chosen

    def needed(cols: list[Column]) -> int:
        return sum(max(c.min_width, len(c.header)) + 2 for c in cols)  # 1 cell of padding each side

    while len(chosen) > 1 and needed(chosen) > width:
        chosen.remove(max(chosen, key=lambda c: c.rank))
    return chosen


def _table(title: str, columns: list[Column]) -> Table:
    table = Table(
        title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
    )
    for c in columns:
        table.add_column(
            c.header, min_width=max(c.min_width, len(c.header)), no_wrap=not c.wraps,
            overflow="fold" if c.wraps else "ellipsis",
        )
    return table


def _bar_width(width: int | None) -> int:
    return 20 if width is None or width >= 140 else 10 if width >= 100 else 0


def _memory(used: int | None, total: int | None, width: int | None) -> Text:
    bw = _bar_width(width)
    if bw:
        return bar(used, total, width=bw)
    if not total:
        return Text("—", style="dim")
    text = bar(used, total, width=1)  # colour by fraction, then keep the numbers only
    numbers = f"{format_size(used)}/{format_size(total)}" if used is not None else f"?/{format_size(total)}"
    return Text(numbers, style=text.spans[0].style if text.spans else "")


def gpu_table(info: Mapping[str, Any], width: int | None = None) -> Table:
    """One row per GPU: memory, utilisation, temperature, power, MPS daemon and server (as many as fit)."""
    mem_w = 10 + _bar_width(width) + (1 if _bar_width(width) else 0) + 8
    columns = choose_columns([
        Column("GPU", 3, 0),
        Column("name", 12, 6, wraps=True),
        Column("memory", mem_w, 1),
        Column("SM", 4, 2),
        Column("mem BW", 4, 7),
        Column("temp", 5, 4),
        Column("power", 6, 5),
        Column("MPS daemon", 20, 3, wraps=True),
        Column("pipe dir", 20, 8, wraps=True),
    ], width)
    table = _table("GPUs", columns)
    for g in info.get("gpus") or []:
        daemon = g.get("mps")
        cells: dict[str, RenderableType] = {
            "GPU": str(g.get("index")),
            "name": _t(g.get("name", "")),
            "memory": _memory(g.get("memory_used_bytes"), g.get("memory_total_bytes"), width),
            "SM": _num(g.get("sm_util_pct"), "%"),
            "mem BW": _num(g.get("mem_util_pct"), "%"),
            "temp": _num(g.get("temperature_c"), "°C"),
            "power": _num(g.get("power_w"), " W"),
            "MPS daemon": _daemon_cell(daemon),
            "pipe dir": _t((daemon or {}).get("pipe_dir") or "—"),
        }
        table.add_row(*(cells[c.header] for c in columns))
    return table


def agent_table(agents: Sequence[Mapping[str, Any]], width: int | None = None) -> Table:
    """One row per agent: state, GPU, pid, memory used against its limit, peak, restarts, last error."""
    name_w = min(24, max([len(plain(a.get("name", ""))) for a in agents] + [5]))
    gpu_w = min(16, max([len(plain(a.get("gpu") or "—")) for a in agents] + [3]))
    mem_w = 10 + _bar_width(width) + (1 if _bar_width(width) else 0) + 8
    columns = choose_columns([
        Column("agent", name_w, 0),
        Column("state", 8, 1),
        Column("GPU", gpu_w, 2),
        Column("pid", 7, 4),
        Column("memory used / limit", mem_w, 3),
        Column("peak", 9, 6),
        Column("restarts", 3, 5),
        Column("last error", 16, 7, wraps=True),
    ], width)
    table = _table("Agents", columns)
    for a in agents:
        state = plain(a.get("state", "?"))
        peak = a.get("memory_peak_bytes")
        cells: dict[str, RenderableType] = {
            "agent": _t(a.get("name")),
            "state": Text(state.upper(), style=STATE_STYLE.get(state.lower(), "")),
            "GPU": _t(a.get("gpu") or "—"),
            "pid": str(a.get("pid") or "—"),
            "memory used / limit": _memory(a.get("memory_used_bytes"), a.get("limit_bytes"), width),
            "peak": format_size(peak) if isinstance(peak, int) else "—",
            "restarts": str(a.get("restarts", 0)),
            "last error": _t(a.get("last_error") or "", style="red"),
        }
        table.add_row(*(cells[c.header] for c in columns))
    return table


@dataclass(frozen=True)
class Freshness:
    """How old the frame's data is: ``last_ok`` (wall-clock seconds) of the last good poll, and the error
    of the polls since, if they failed (``error_since`` when they started failing)."""

    last_ok: float | None
    error: str | None = None
    error_since: float | None = None


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def header(info: Mapping[str, Any], url: str, fresh: Freshness | None = None) -> Text:
    """Where and when (the last good poll; ``q`` quits), then driver/CUDA and whether MPS is on."""
    text = Text()
    text.append("colo top", style="bold")
    text.append(f"  {plain(url)}")
    if fresh is not None:
        if fresh.last_ok is not None:
            text.append(f"  updated {_clock(fresh.last_ok)}", style="dim" if fresh.error is None else "yellow")
        text.append("  (q quits)", style="dim")
        text.append("\n")
    else:
        text.append("  ")
    text.append(f"driver {plain(info.get('driver_version') or '—')}  CUDA {plain(info.get('cuda_version') or '—')}  ")
    mps = info.get("mps") or {}
    if info.get("mps_enabled"):
        running = sum(1 for d in mps.get("daemons") or [] if d.get("running"))
        text.append(f"MPS on ({running} daemon(s))", style="green")
    else:
        text.append("MPS off", style="yellow")
    if fresh is not None and fresh.error is not None:
        since = f" since {_clock(fresh.error_since)}" if fresh.error_since is not None else ""
        text.append("\n")
        text.append(f"disconnected{since}, retrying: {plain(fresh.error)}", style="bold yellow")
    return text


def render_frame(
    info: Mapping[str, Any],
    agents: Sequence[Mapping[str, Any]],
    *,
    url: str,
    width: int | None = None,
    fresh: Freshness | None = None,
) -> RenderableType:
    """The whole frame: header, the GPU table (or the reason there is none), the agent table.

    ``width`` (columns) chooses which columns fit; None shows them all.
    """
    parts: list[RenderableType] = [header(info, url, fresh)]
    if info.get("error"):
        parts.append(_t(f"GPU: {info['error']}", style="yellow"))
    if info.get("gpus"):
        parts.append(gpu_table(info, width))
    parts.append(agent_table(agents, width))
    return Group(*parts)


Poll = Callable[[], tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]


class TopLoop:
    """Poll, render, wait for a key; survive the orchestrator going away and coming back.

    ``poll()`` returns ``(gpu_info, agents)`` or raises a ColoError (unreachable, refused); ``wait_key(secs)``
    returns a key pressed within ``secs`` or None; ``clock``'s wall time stamps each poll (shown as a clock).
    """

    def __init__(
        self, poll: Poll, *, url: str, interval_secs: float,
        wait_key: Callable[[float], str | None], clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.poll = poll
        self.url = url
        self.interval_secs = interval_secs
        self.wait_key = wait_key
        self.clock = clock
        self.info: Mapping[str, Any] = {}
        self.agents: Sequence[Mapping[str, Any]] = []
        self.fresh = Freshness(last_ok=None)

    def refresh(self) -> None:
        """One poll: new data and its time, or the error (the last good data stays on screen)."""
        try:
            self.info, self.agents = self.poll()
        except ColoError as exc:
            since = self.fresh.error_since if self.fresh.error is not None else self.clock.wall()
            self.fresh = Freshness(self.fresh.last_ok, error=str(exc), error_since=since)
            return
        self.fresh = Freshness(last_ok=self.clock.wall())

    def frame(self, width: int | None) -> RenderableType:
        return render_frame(self.info, self.agents, url=self.url, width=width, fresh=self.fresh)

    def run(self, show: Callable[[RenderableType], None], width: Callable[[], int | None]) -> None:
        """Until ``q`` (or Ctrl-C): refresh, ``show`` the frame, wait ``interval_secs`` for a key."""
        while True:
            self.refresh()
            show(self.frame(width()))
            key = self.wait_key(self.interval_secs)
            if key is not None and key.lower() == "q":
                return


@contextlib.contextmanager
def terminal_keys(stream: TextIO | None = None) -> Iterator[Callable[[float], str | None]]:
    """A ``wait_key(secs)`` reading single keys from a terminal (cbreak mode, restored on exit).

    Without a terminal on stdin it just sleeps ``secs`` and reports no key.
    """
    stream = stream if stream is not None else sys.stdin
    try:
        fd = stream.fileno()
        is_tty = os.isatty(fd)
    except (OSError, ValueError):
        is_tty = False
    if not is_tty:
        def sleep_only(secs: float) -> str | None:
            time.sleep(secs)
            return None

        yield sleep_only
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait_key(secs: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], secs)
        if not ready:
            return None
        data = os.read(fd, 32)
        return data[:1].decode("utf-8", "replace") if data else None

    try:
        yield wait_key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
