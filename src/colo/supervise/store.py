"""The orchestrator's durable state in SQLite (``<state_dir>/colo.db``, WAL); the only sqlite3 importer.

What is kept:

* ``agents``: each agent's state, pid + process start time (for re-adoption), restarts, placement, limit,
  last error and launch fingerprint — so ``colo status`` and an orchestrator started again see the truth;
* ``events``: started, ready, exited (code/signal), out of memory, MPS fault, restarted, fatal, ...;
* ``usage``: the usage history, one row per agent per window (:class:`UsageSample`: memory high-water mark,
  largest request shapes), bounded by ``policy.history_retention`` and ``policy.history_max_rows``;
* ``meta``: small facts (orchestrator pid, config path, MPS daemons colo started).

Every method is safe to call from several threads (one connection, one lock). sqlite3 errors become
SupervisorError naming the database file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from colo.errors import SupervisorError
from colo.supervise.snapshots import AgentStatus, Event, EventKind, Shape, UsageSample
from colo.supervise.state import AgentState

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    pid INTEGER,
    start_time REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    gpu TEXT,
    gpu_uuid TEXT,
    limit_bytes INTEGER NOT NULL DEFAULT 0,
    requirement_bytes INTEGER NOT NULL DEFAULT 0,
    priority TEXT NOT NULL DEFAULT 'medium',
    memory_used_bytes INTEGER,
    memory_peak_bytes INTEGER,
    last_error TEXT,
    since REAL,
    models TEXT NOT NULL DEFAULT '[]',
    fingerprint TEXT,
    last_error_line TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    agent TEXT,
    message TEXT NOT NULL,
    gpu TEXT
);
CREATE TABLE IF NOT EXISTS usage (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    peak_bytes INTEGER NOT NULL,
    limit_bytes INTEGER NOT NULL,
    polls INTEGER NOT NULL,
    gpu TEXT,
    shapes TEXT NOT NULL DEFAULT '[]',
    oom INTEGER NOT NULL DEFAULT 0,
    requests INTEGER
);
CREATE INDEX IF NOT EXISTS usage_by_agent ON usage (agent, end);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
EVENT_COLUMNS = "seq, time, kind, agent, message, gpu"
# The agents table's columns, in order: AgentStatus's fields by the same names (``state`` stored as its value,
# ``models`` as a JSON list) and AgentRecord's ``start_time`` and ``fingerprint``.
AGENT_COLUMNS = (
    "name, state, pid, start_time, restarts, gpu, gpu_uuid, limit_bytes, requirement_bytes, priority,"
    " memory_used_bytes, memory_peak_bytes, last_error, since, models, fingerprint, last_error_line"
)
AGENT_FIELDS = tuple(c.strip() for c in AGENT_COLUMNS.split(","))


@dataclass(frozen=True)
class AgentRecord:
    """One agent's row: its status plus what re-adoption needs (process start time, launch fingerprint)."""

    status: AgentStatus
    start_time: float | None = None
    fingerprint: str | None = None

    def to_row(self) -> tuple[Any, ...]:
        """The agents table's row, in AGENT_FIELDS order."""
        s = self.status
        cells = {f.name: getattr(s, f.name) for f in fields(AgentStatus)}
        cells |= {"state": s.state.value, "models": json.dumps(list(s.models))}
        cells |= {"start_time": self.start_time, "fingerprint": self.fingerprint}
        return tuple(cells[name] for name in AGENT_FIELDS)

    @staticmethod
    def from_row(row: tuple[Any, ...]) -> AgentRecord:
        cells = dict(zip(AGENT_FIELDS, row, strict=True))
        start_time, fingerprint = cells.pop("start_time"), cells.pop("fingerprint")
        cells |= {"state": AgentState(cells["state"]), "models": tuple(json.loads(cells["models"] or "[]"))}
        return AgentRecord(AgentStatus(**cells), start_time, fingerprint)


class Store:
    """SQLite at ``path`` (created with its parent directory). Raises SupervisorError when unusable."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._add_missing_columns()
        except (sqlite3.Error, OSError) as exc:
            raise SupervisorError(
                f"cannot open colo's state database {self.path}: {exc}",
                hint="check the state directory is writable (--state-dir, or state_dir in colo.yaml)",
            ) from exc

    def _add_missing_columns(self) -> None:
        """A state dir written by an older colo lacks columns added since: add them (NULL for old rows)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(agents)")}
        if "last_error_line" not in have:
            self._db.execute("ALTER TABLE agents ADD COLUMN last_error_line TEXT")

    @classmethod
    def open_existing(cls, path: Path) -> Store | None:
        """The store at ``path`` if the file exists, else None (for read-only views)."""
        return cls(path) if Path(path).exists() else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise SupervisorError(f"colo's state database {self.path} failed: {exc}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise SupervisorError(f"colo's state database {self.path} failed: {exc}") from exc

    # agents ----------------------------------------------------------------------------------------------
    def save_agent(self, record: AgentRecord) -> None:
        """Insert or replace one agent's row."""
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO agents ({AGENT_COLUMNS}) VALUES ({', '.join('?' * len(AGENT_FIELDS))})",
                record.to_row(),
            )

    def delete_agent(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM agents WHERE name = ?", (name,))

    def agents(self) -> list[AgentRecord]:
        """All agent rows, by name."""
        rows = self._query(f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY name")
        return [AgentRecord.from_row(r) for r in rows]

    # events ----------------------------------------------------------------------------------------------
    def add_event(self, time: float, kind: EventKind, agent: str | None, message: str, gpu: str | None = None) -> Event:
        """Append an event; returns it with its sequence number."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (time, kind, agent, message, gpu) VALUES (?,?,?,?,?)",
                (time, kind.value, agent, message, gpu),
            )
            seq = int(cur.lastrowid or 0)
        return Event(seq, time, kind, agent, message, gpu)

    def events(
        self, since_seq: int = 0, limit: int = 200, agent: str | None = None, *, tail: bool = False
    ) -> list[Event]:
        """Events after ``since_seq``, oldest first: the first ``limit`` of them, or with ``tail`` the last
        ``limit`` (the newest)."""
        where = "seq > ?" + (" AND agent = ?" if agent else "")
        args: tuple[Any, ...] = (since_seq, agent) if agent else (since_seq,)
        if tail:
            sql = (
                f"SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE {where}"
                " ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            )
        else:
            sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq LIMIT ?"
        rows = self._query(sql, (*args, max(limit, 0)))
        return [Event(r[0], r[1], EventKind(r[2]), r[3], r[4], r[5]) for r in rows]

    # usage history ---------------------------------------------------------------------------------------
    def add_usage(self, samples: list[UsageSample], *, keep_after: float, max_rows: int) -> int:
        """Append ``samples`` and prune, in one transaction: rows that ended before ``keep_after`` (wall
        seconds) and the oldest beyond ``max_rows``. Returns how many rows were pruned."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO usage (agent, start, end, peak_bytes, limit_bytes, polls, gpu, shapes, oom, requests)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        s.agent, s.start, s.end, s.peak_bytes, s.limit_bytes, s.polls, s.gpu,
                        json.dumps([[x.model, x.rows, x.seq_len, x.new_tokens] for x in s.shapes]), s.oom,
                        s.requests,
                    )
                    for s in samples
                ],
            )
            pruned = db.execute("DELETE FROM usage WHERE end < ?", (keep_after,)).rowcount
            pruned += db.execute(
                "DELETE FROM usage WHERE seq <= (SELECT seq FROM usage ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (max(max_rows, 0),),
            ).rowcount
        return max(pruned, 0)

    def usage(self, since: float = 0.0, agent: str | None = None) -> list[UsageSample]:
        """History rows that ended at or after ``since`` (wall seconds), oldest first."""
        where = "end >= ?" + (" AND agent = ?" if agent else "")
        args: tuple[Any, ...] = (since, agent) if agent else (since,)
        rows = self._query(
            "SELECT agent, start, end, peak_bytes, limit_bytes, polls, gpu, shapes, oom, requests FROM usage"
            f" WHERE {where} ORDER BY seq",
            args,
        )
        return [
            UsageSample(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6],
                tuple(Shape(str(m), int(b), int(q), int(n)) for m, b, q, n in json.loads(r[7] or "[]")), r[8], r[9],
            )
            for r in rows
        ]

    def usage_rows(self) -> int:
        """How many rows the usage history holds."""
        return int(self._query("SELECT COUNT(*) FROM usage")[0][0])

    # meta ------------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def delete_meta(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (key,))
