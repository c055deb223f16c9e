"""Reading an MPS log dir (``control.log``, ``server.log``) incrementally into typed events.

Lines look like ``[2026-05-31 23:48:21.671 Control 11107] NEW CLIENT 11801 from user 1000: ...`` (the pid
may be space-padded; the role is ``Control``, ``Server``, ``Other`` or ``Legacy Server``). The reader keeps a
byte offset per file, returns only complete new lines, and starts over when a file shrinks (rotated or
truncated). Lines that mean nothing to colo are skipped; ``User did not send valid credentials`` is a normal
connection step, not an error.

Recognised (text as the daemon and server write it; see docs/mps.md):

- DAEMON_STARTED   ``Starting control daemon using socket <pipe>/control``
- SERVER_STARTED   ``Starting new server <pid> for user <uid>`` / ``NEW SERVER <pid>: Ready`` /
  ``Server has started``
- SERVER_EXITED    ``Server <pid> exited with status <n>``
- CLIENT_CONNECTED ``NEW CLIENT <pid> from user <uid>`` / ``Client {PID: <pid>, Context ID: <n>} connected`` /
  ``Status of client {<pid>, <n>} is ACTIVE``
- CLIENT_DISCONNECTED ``Client {PID: <pid>, ...} disconnected`` / ``Client <pid> disconnected`` /
  ``Client process disconnected`` / ``Receive command failed, assuming client exit`` /
  ``Client {<pid>, <n>} exit`` (any client line saying disconnected, detached, exit, exited)
- CLIENT_TERMINATED ``... terminated`` naming a client
- FAULT            ``Server encountered a fatal exception`` / ``fatal`` / ``FAULT`` / ``Xid``
- DAEMON_EXITED    ``Exit`` / ``Shutting down`` from the control daemon
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path


class MpsLogKind(Enum):
    DAEMON_STARTED = "daemon_started"
    DAEMON_EXITED = "daemon_exited"
    SERVER_STARTED = "server_started"
    SERVER_EXITED = "server_exited"
    CLIENT_CONNECTED = "client_connected"
    CLIENT_DISCONNECTED = "client_disconnected"
    CLIENT_TERMINATED = "client_terminated"
    FAULT = "fault"


@dataclass(frozen=True)
class MpsLogEvent:
    """One meaningful log line. ``pid`` is the process that logged it; ``server_pid``/``client_pid`` the
    server or client it is about, where the line names one; ``exit_status`` for SERVER_EXITED."""

    kind: MpsLogKind
    time: datetime | None
    pid: int | None
    client_pid: int | None
    message: str
    source: str = "control"
    server_pid: int | None = None
    exit_status: int | None = None


_LINE = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s+"
    r"(?P<role>[A-Za-z ]+?)\s+(?P<pid>\d+)\]\s?(?P<msg>.*)$"
)
_CLIENT_BRACED = re.compile(r"Client \{(?:PID:\s*)?(\d+)\s*,")
_CLIENT_PLAIN = re.compile(r"[Cc]lient(?: process)?\s+(\d+)\b")
_STATUS_OF = re.compile(r"Status of client \{(\d+)\s*,\s*\d+\} is (\w+)")


def _time(ts: str) -> datetime | None:
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(ts, fmt)
        except ValueError:
            continue
    return None


def _client_pid(msg: str) -> int | None:
    m = _CLIENT_BRACED.search(msg) or _CLIENT_PLAIN.search(msg)
    return int(m.group(1)) if m else None


def parse_line(line: str, source: str = "control") -> MpsLogEvent | None:
    """The event one log line reports, or None for lines colo does not act on."""
    m = _LINE.match(line.rstrip("\r\n"))
    if not m:
        return None
    msg = m.group("msg").strip()
    role = m.group("role").strip()
    pid = int(m.group("pid"))
    when = _time(m.group("ts"))

    def ev(
        kind: MpsLogKind,
        *,
        client_pid: int | None = None,
        server_pid: int | None = None,
        exit_status: int | None = None,
    ) -> MpsLogEvent:
        return MpsLogEvent(kind, when, pid, client_pid, msg, source, server_pid, exit_status)

    low = msg.lower()
    if msg.startswith("Starting control daemon"):
        return ev(MpsLogKind.DAEMON_STARTED)
    if (mm := re.match(r"Starting new server (\d+)", msg)) or (mm := re.match(r"NEW SERVER (\d+)", msg)):
        return ev(MpsLogKind.SERVER_STARTED, server_pid=int(mm.group(1)))
    if msg.startswith("Server has started"):
        return ev(MpsLogKind.SERVER_STARTED, server_pid=pid)
    if mm := re.match(r"Server (\d+) exited with status (-?\d+)", msg):
        return ev(MpsLogKind.SERVER_EXITED, server_pid=int(mm.group(1)), exit_status=int(mm.group(2)))
    if "fatal" in low or re.search(r"\bFAULT\b", msg) or "xid" in low:
        return ev(MpsLogKind.FAULT, server_pid=pid if role.endswith("Server") else None, client_pid=_client_pid(msg))
    if mm := re.match(r"NEW CLIENT (\d+) from user", msg):
        return ev(MpsLogKind.CLIENT_CONNECTED, client_pid=int(mm.group(1)))
    if mm := _STATUS_OF.search(msg):
        if mm.group(2).upper() == "ACTIVE":
            return ev(MpsLogKind.CLIENT_CONNECTED, client_pid=int(mm.group(1)), server_pid=pid)
        return None
    if "terminat" in low and "client" in low:
        return ev(MpsLogKind.CLIENT_TERMINATED, client_pid=_client_pid(msg), server_pid=pid)
    gone = re.search(r"\b(disconnected|detached|exit|exited|exiting)\b", low)
    if gone and "client" in low:
        return ev(MpsLogKind.CLIENT_DISCONNECTED, client_pid=_client_pid(msg), server_pid=pid)
    if re.search(r"\bconnected\b", low) and "client" in low:
        return ev(MpsLogKind.CLIENT_CONNECTED, client_pid=_client_pid(msg), server_pid=pid)
    if role == "Control" and (msg == "Exit" or msg.lower().startswith("shutting down")):
        return ev(MpsLogKind.DAEMON_EXITED)
    return None


class MpsLogReader:
    """Incremental reader of one MPS log dir. Not thread-safe: one reader per consumer."""

    FILES = (("control.log", "control"), ("server.log", "server"))

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}

    def read_new(self) -> list[MpsLogEvent]:
        """Events from lines completed since the last call (control.log first, then server.log)."""
        events: list[MpsLogEvent] = []
        for name, source in self.FILES:
            for line in self._new_lines(name):
                e = parse_line(line, source)
                if e is not None:
                    events.append(e)
        return events

    def _new_lines(self, name: str) -> list[str]:
        path = self.log_dir / name
        try:
            size = path.stat().st_size
        except OSError:
            return []
        offset = self._offsets.get(name, 0)
        if size < offset:  # truncated or rotated: read the new file from its start
            offset = 0
            self._partial[name] = b""
        if size == offset:
            return []
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(size - offset)
        except OSError:
            return []
        self._offsets[name] = offset + len(data)
        data = self._partial.get(name, b"") + data
        *complete, rest = data.split(b"\n")
        self._partial[name] = rest
        return [ln.decode("utf-8", "replace") for ln in complete]
