"""``colo top``'s frame: GPUs, their MPS daemons, and every agent's memory against its limit.

Thin: :func:`render_frame` formats the ``GET /gpu/info`` and ``GET /agents`` documents and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

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


def _daemon_cell(daemon: Mapping[str, Any] | None) -> Text:
    if not daemon:
        return Text("none", style="dim")
    if not daemon.get("running"):
        return Text("not running", style="yellow")
    if daemon.get("error"):
        return Text(f"error: {daemon['error']}", style="red")
    servers = daemon.get("servers") or []
    if not servers:
        return Text("up, no server yet", style="green")
    parts = Text()
    for i, s in enumerate(servers):
        status = str(s.get("status", "?"))
        style = "green" if status.upper() == "ACTIVE" else "bold red" if status.upper() == "FAULT" else "yellow"
        if i:
            parts.append(", ")
        parts.append(f"server {s.get('pid')} ")
        parts.append(status, style=style)
        parts.append(f" · {len(s.get('client_pids') or [])} clients")
    return parts


def gpu_table(info: Mapping[str, Any]) -> Table:
    """One row per GPU: memory bar, utilisation, temperature, power, MPS daemon and server."""
    table = Table(title="GPUs", title_justify="left", expand=True)
    for col in ("GPU", "name", "memory", "SM", "mem BW", "temp", "power", "MPS daemon", "pipe dir"):
        table.add_column(col, no_wrap=col not in ("name", "pipe dir"))
    for g in info.get("gpus") or []:
        daemon = g.get("mps")
        table.add_row(
            str(g.get("index")),
            str(g.get("name", "")),
            bar(g.get("memory_used_bytes"), g.get("memory_total_bytes")),
            _num(g.get("sm_util_pct"), "%"),
            _num(g.get("mem_util_pct"), "%"),
            _num(g.get("temperature_c"), "°C"),
            _num(g.get("power_w"), " W"),
            _daemon_cell(daemon),
            str((daemon or {}).get("pipe_dir") or "—"),
        )
    return table


def agent_table(agents: Sequence[Mapping[str, Any]]) -> Table:
    """One row per agent: state, GPU, pid, memory used against its limit, peak, restarts, last error."""
    table = Table(title="Agents", title_justify="left", expand=True)
    for col in ("agent", "state", "GPU", "pid", "memory used / limit", "peak", "restarts", "last error"):
        table.add_column(col, no_wrap=col != "last error")
    for a in agents:
        state = str(a.get("state", "?"))
        peak = a.get("memory_peak_bytes")
        table.add_row(
            str(a.get("name")),
            Text(state.upper(), style=STATE_STYLE.get(state.lower(), "")),
            str(a.get("gpu") or "—"),
            str(a.get("pid") or "—"),
            bar(a.get("memory_used_bytes"), a.get("limit_bytes")),
            format_size(peak) if isinstance(peak, int) else "—",
            str(a.get("restarts", 0)),
            Text(str(a.get("last_error") or ""), style="red"),
        )
    return table


def header(info: Mapping[str, Any], url: str) -> Text:
    """One line: where, driver/CUDA, and whether MPS is on."""
    text = Text()
    text.append("colo top", style="bold")
    text.append(f"  {url}  driver {info.get('driver_version') or '—'}  CUDA {info.get('cuda_version') or '—'}  ")
    mps = info.get("mps") or {}
    if info.get("mps_enabled"):
        running = sum(1 for d in mps.get("daemons") or [] if d.get("running"))
        text.append(f"MPS on ({running} daemon(s))", style="green")
    else:
        text.append("MPS off", style="yellow")
    return text


def render_frame(info: Mapping[str, Any], agents: Sequence[Mapping[str, Any]], *, url: str) -> RenderableType:
    """The whole frame: header, the GPU table (or the reason there is none), the agent table."""
    parts: list[RenderableType] = [header(info, url)]
    if info.get("error"):
        parts.append(Text(f"GPU: {info['error']}", style="yellow"))
    if info.get("gpus"):
        parts.append(gpu_table(info))
    parts.append(agent_table(agents))
    return Group(*parts)
