"""Where tuned limits live: ``<state_dir>/tuned_limits.json``, read by every plan of that state dir (``colo
plan``, ``up``, ``apply``) through :func:`colo.supervise.planning.memory_inputs`::

    {"version": 1,
     "agents": {"analyst": {"limit_bytes": 1207959552, "basis_bytes": 1100000000,
                            "previous_limit_bytes": 1879048192, "key": [[model, dtype, batch, seq, new], ...],
                            "detail": "peak 1.0 GiB over 18 windows (3 min) …", "tuned_at": 1764460000.0,
                            "rolled_back_at": null}}}

An entry applies only while the agent's models and their worst-case shapes (``key``) are what they were when
it was tuned, and until it is rolled back (``rolled_back_at`` set: the agent ran out of memory under it, the
plan uses requirement + margin again). Delete the file (or an entry) to return to the policy's limits.

One writer at a time: every change is a read-modify-write inside :func:`update`, which holds an exclusive
``fcntl`` lock on ``tuned_limits.json.lock`` beside the file. The running orchestrator is the file's writer (a
rollback, and ``colo tune --apply`` through its API); ``colo tune --apply`` without a running orchestrator
writes under the same lock, so neither can lose the other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from colo.errors import ColoError, ConfigError
from colo.files import write_atomic
from colo.memory.worst_case import model_request
from colo.plan.types import TunedLimit
from colo.spec.config import ColoConfig, ModelSpec
from colo.spec.load import read_text

VERSION = 1


@dataclass(frozen=True)
class TunedEntry:
    """One agent's tuned limit, the limit it replaced, and what it was tuned for."""

    limit_bytes: int
    basis_bytes: int
    previous_limit_bytes: int
    key: tuple[tuple[Any, ...], ...]
    detail: str = ""
    tuned_at: float = 0.0
    rolled_back_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = [list(k) for k in self.key]
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TunedEntry:
        return TunedEntry(
            limit_bytes=int(d["limit_bytes"]),
            basis_bytes=int(d["basis_bytes"]),
            previous_limit_bytes=int(d["previous_limit_bytes"]),
            key=tuple(tuple(k) for k in d.get("key", [])),
            detail=str(d.get("detail", "")),
            tuned_at=float(d.get("tuned_at", 0.0)),
            rolled_back_at=None if d.get("rolled_back_at") is None else float(d["rolled_back_at"]),
        )


def agent_key(config: ColoConfig, agent: str) -> tuple[tuple[Any, ...], ...]:
    """What a tuned limit was tuned for: the agent's models with their worst-case shapes (a model colo cannot
    place, such as a command agent's, by its spec's numbers)."""
    out: list[tuple[Any, ...]] = []
    for m in config.agents[agent].models:
        spec = config.models.get(m) or ModelSpec()
        try:
            out.append(model_request(m, spec).shape)
        except ColoError:
            out.append((m, spec.dtype, spec.batch_size, spec.max_seq_len, spec.new_tokens))
    return tuple(out)


def load(path: Path) -> dict[str, TunedEntry]:
    """The file's entries (none when it does not exist). Raises ConfigError for a corrupt file."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = json.loads(read_text(p))  # bounded, regular files only: the state dir may be shared
        return {str(name): TunedEntry.from_dict(d) for name, d in data.get("agents", {}).items()}
    except (ConfigError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"the tuned limits file {p} cannot be read: {exc}",
            hint="delete it to plan with the policy's limits again (`colo tune --apply` writes a new one)",
        ) from exc


def lock_path(path: Path) -> Path:
    """The lock file beside ``path``: ``tuned_limits.json.lock``."""
    return Path(path).with_name(Path(path).name + ".lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the tuned-limits file's exclusive lock (blocks while another process holds it). Raises
    ConfigError when the lock file cannot be opened (an unwritable state dir)."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot lock the tuned limits file: {exc.strerror or exc}", source=str(lock),
            hint="run as the user that runs colo, or check the state dir's permissions",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update(
    path: Path, change: Callable[[dict[str, TunedEntry]], Mapping[str, TunedEntry]]
) -> dict[str, TunedEntry]:
    """Read the file, let ``change`` return the entries to write (it gets a copy of what is there), and write
    them — all under :func:`locked`; when ``change`` changes nothing, nothing is written. Returns the entries
    now in force. Raises ConfigError (a corrupt file: nothing is written)."""
    with locked(path):
        before = load(path)
        entries = dict(change(dict(before)))
        if entries != before:
            save(path, entries)
        return entries


def save(path: Path, entries: Mapping[str, TunedEntry]) -> None:
    """Write ``entries`` atomically (the whole file). Writers go through :func:`update` (the lock)."""
    body = {"version": VERSION, "agents": {n: e.to_dict() for n, e in sorted(entries.items())}}
    write_atomic(path, json.dumps(body, indent=2) + "\n")


def applicable(config: ColoConfig, entries: Mapping[str, TunedEntry]) -> dict[str, TunedLimit]:
    """The tuned limits the planner uses: entries of agents still in ``config`` with the same models and
    worst-case shapes; a rolled-back one says so (the planner keeps the policy's limit for it)."""
    out: dict[str, TunedLimit] = {}
    for name, e in entries.items():
        if name not in config.agents or e.key != agent_key(config, name):
            continue
        out[name] = TunedLimit(name, e.limit_bytes, e.basis_bytes, e.detail, rolled_back=e.rolled_back_at is not None)
    return out


def mark_rolled_back(path: Path, agent: str, when: float) -> TunedEntry | None:
    """Record that ``agent``'s tuned limit was rolled back (at wall time ``when``), under the lock; returns
    its entry (None: it has none)."""

    def change(entries: dict[str, TunedEntry]) -> dict[str, TunedEntry]:
        if agent in entries:
            entries[agent] = replace(entries[agent], rolled_back_at=when)
        return entries

    return update(path, change).get(agent)
