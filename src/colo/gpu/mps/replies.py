"""What the MPS control program answers, parsed, and the snapshots colo builds from it.

Replies (documented formats of ``nvidia-cuda-mps-control``): ``get_server_list`` / ``get_client_list`` print one
pid per line; ``get_server_status <pid>`` prints INITIALIZING, ACTIVE or FAULT; ``ps`` prints a table
``PID ID SERVER DEVICE NAMESPACE COMMAND``. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any


class ServerStatus(Enum):
    """``get_server_status <pid>``: INITIALIZING, ACTIVE or FAULT; UNKNOWN when the answer is none of them."""

    INITIALIZING = "INITIALIZING"
    ACTIVE = "ACTIVE"
    FAULT = "FAULT"
    UNKNOWN = "UNKNOWN"


def parse_server_status(text: str) -> ServerStatus:
    """The status word in a ``get_server_status`` reply."""
    for word in re.findall(r"[A-Z_]+", text.upper()):
        if word in ServerStatus.__members__:
            return ServerStatus[word]
    return ServerStatus.UNKNOWN


def parse_pids(text: str) -> list[int]:
    """PIDs in a ``get_server_list`` / ``get_client_list`` reply (one per line)."""
    return [int(tok) for line in text.splitlines() for tok in line.split() if tok.isdigit()]


@dataclass(frozen=True)
class MpsClientRow:
    """One row of the control daemon's ``ps``: a client process and the server it is attached to."""

    pid: int
    server_pid: int | None
    device: str
    command: str
    client_id: str = ""


def parse_ps(text: str) -> list[MpsClientRow]:
    """``ps`` output: a header (``PID ID SERVER DEVICE NAMESPACE COMMAND``) then one row per client.

    Columns are found from the header; COMMAND takes the rest of the line. Rows that do not start with a pid
    are skipped.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split()
    if not header or header[0].upper() != "PID":
        header = ["PID", "ID", "SERVER", "DEVICE", "NAMESPACE", "COMMAND"]
        rows = lines
    else:
        rows = lines[1:]
    cols = [h.upper() for h in header]
    n_fixed = len(cols) - 1 if cols[-1] == "COMMAND" else len(cols)
    out: list[MpsClientRow] = []
    for ln in rows:
        parts = ln.split(None, n_fixed)
        if not parts or not parts[0].isdigit():
            continue
        rec = dict(zip(cols, parts, strict=False))
        server = rec.get("SERVER", "")
        out.append(
            MpsClientRow(
                pid=int(parts[0]),
                server_pid=int(server) if server.isdigit() else None,
                device=rec.get("DEVICE", ""),
                command=rec.get("COMMAND", "").strip(),
                client_id=rec.get("ID", ""),
            )
        )
    return out


@dataclass(frozen=True)
class ServerInfo:
    """One MPS server of a daemon at one moment."""

    pid: int
    status: ServerStatus
    client_pids: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "status": self.status.value, "client_pids": list(self.client_pids)}


@dataclass(frozen=True)
class DaemonStatus:
    """One GPU's daemon at one moment: running/healthy, its servers and their clients."""

    gpu_uuid: str
    pipe_dir: str
    log_dir: str
    control_pid: int | None
    running: bool
    healthy: bool
    default_active_thread_pct: float | None = None
    servers: tuple[ServerInfo, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field by its name, the servers as their dicts."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["servers"] = [s.to_dict() for s in self.servers]
        return out


@dataclass(frozen=True)
class StopResult:
    """What ``stop`` did: whether a daemon ran, whether it answered ``quit``, which pids had to be killed."""

    was_running: bool
    quit_answered: bool = False
    killed_pids: tuple[int, ...] = ()
    message: str = ""
