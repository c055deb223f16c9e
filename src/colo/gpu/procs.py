"""Process inspection: the one door to psutil.

Every question colo asks the process table goes through here: is this pid (still the same process) alive,
when did it start, its children and parents, its environment, its name and command line, its resident memory,
its threads' CPU time, which processes look like MPS programs — and waiting for one of several processes to
exit (pidfds). psutil's errors never leave this module: a process that is gone, a zombie or one we may not read
answers with a plain value (``None``, ``False``, ``()``), as documented on each function, so callers treat
"cannot see it" as data.

CLI equivalents: ``ps -o pid,lstart,stat,args -p PID``, ``pgrep -P PID``, ``cat /proc/PID/environ``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psutil

#: Two start times closer than this (seconds) are the same process (psutil rounds create_time).
START_TIME_TOLERANCE_SECS = 1.0


def create_time(pid: int) -> float | None:
    """The process's start time (epoch seconds), or None when it is gone or not visible."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def is_alive(pid: int, start_time: float | None = None, *, denied_is_alive: bool = False) -> bool:
    """True when ``pid`` runs and is not a zombie (and, given ``start_time``, is the process that started then:
    a reused pid is not alive). A process we may not inspect counts as alive only when ``denied_is_alive``."""
    try:
        proc = psutil.Process(pid)
        if start_time is not None and abs(proc.create_time() - start_time) > START_TIME_TOLERANCE_SECS:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.AccessDenied:
        return denied_is_alive
    except (psutil.Error, OSError):
        return False


def is_stopped(pid: int) -> bool:
    """True when ``pid`` is stopped (``ps`` stat ``T``/``t``: SIGSTOP, or a tracer holds it): alive but never
    scheduled, so it answers nothing until SIGCONT (SIGKILL still ends it). False when it runs, is gone or is
    not visible."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.Error, OSError):
        return False


def descendants(pid: int) -> list[int]:
    """Pids of every child of ``pid``, recursively; empty when it is gone or not visible."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except (psutil.Error, OSError):
        return []


def ancestors(pid: int) -> list[int] | None:
    """Pids of ``pid``'s parents, nearest first; None when it is gone or not visible."""
    try:
        return [p.pid for p in psutil.Process(pid).parents()]
    except (psutil.Error, OSError):
        return None


def environ(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` was started with; None when unreadable (other user, other PID namespace)."""
    try:
        return dict(psutil.Process(pid).environ())
    except (psutil.Error, OSError):
        return None


def identity(pid: int) -> tuple[str, tuple[str, ...]]:
    """``(name, cmdline)`` of ``pid``; ``("", ())`` when it is gone or not visible."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return proc.name(), tuple(proc.cmdline())
    except (psutil.Error, OSError):
        return "", ()


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of ``pid`` (this process when None) in bytes; None when unreadable."""
    try:
        proc = psutil.Process(pid) if pid is not None else psutil.Process()
        return int(proc.memory_info().rss)
    except (psutil.Error, OSError):
        return None


def thread_cpu_secs(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each live thread of ``pid`` has used, by thread id (the main thread's id
    is ``pid``); empty when the process is gone or not readable. CLI: ``ps -L -o tid,time -p PID``."""
    try:
        return {int(t.id): float(t.user_time + t.system_time) for t in psutil.Process(pid).threads()}
    except (psutil.Error, OSError):
        return {}


@dataclass(frozen=True)
class ProcessView:
    """What one scan saw of a process: names (``exe`` and ``cmdline`` empty when unreadable), its environment
    (empty when unreadable) and real uid (None when unreadable)."""

    pid: int
    name: str
    exe: str
    cmdline: tuple[str, ...]
    environ: dict[str, str]
    uid: int | None


def scan(name_prefix: str) -> Iterator[ProcessView]:
    """Every visible process whose (kernel, 15-character) name starts with ``name_prefix``. Processes that end
    while being read are skipped."""
    for proc in psutil.process_iter():
        try:
            name = proc.name()
            if not name.startswith(name_prefix):
                continue
            cmdline = tuple(proc.cmdline())
            exe = ""
            with contextlib.suppress(psutil.Error, OSError):
                exe = proc.exe()
            env: dict[str, str] = {}
            with contextlib.suppress(psutil.AccessDenied, OSError):
                env = dict(proc.environ())
            uid: int | None = None
            with contextlib.suppress(psutil.Error, AttributeError):
                uid = proc.uids().real
            yield ProcessView(proc.pid, name, exe, cmdline, env, uid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue


# --- reaping -----------------------------------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): orphans among its
    descendants (a daemon whose launcher exited) become its children, so it can reap them instead of a PID 1
    that may not. ``on=False`` ends it. True when it took effect."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def zombie_children(name_prefix: str = "") -> list[tuple[int, str]]:
    """``(pid, name)`` of this process's children that have exited but were not reaped (``ps`` stat ``Z``),
    whose kernel name starts with ``name_prefix``."""
    out: list[tuple[int, str]] = []
    try:
        children = psutil.Process().children(recursive=False)
    except (psutil.Error, OSError):
        return out
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE and child.name().startswith(name_prefix):
                out.append((child.pid, child.name()))
        except (psutil.Error, OSError):
            continue
    return out


def reap_children(name_prefix: str) -> list[int]:
    """Reap this process's exited children named ``name_prefix``… (``waitpid`` on each, never blocking); their
    pids. Only named children: a blanket ``waitpid(-1)`` would steal the exit status ``subprocess`` waits for."""
    reaped: list[int] = []
    for pid, _ in zombie_children(name_prefix):
        with contextlib.suppress(ChildProcessError, OSError):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                reaped.append(pid)
    return reaped


def wait_any_exit(pids: Iterable[int], timeout_secs: float, stop: threading.Event | None = None) -> list[int]:
    """Block until one of ``pids`` exits (then return those that did), ``stop`` is set, or ``timeout_secs``
    pass (then ``[]``). A pid already gone is returned at once. Linux pidfds (``os.pidfd_open``, kernel 5.3+):
    the exit is seen the moment it happens, not at the next poll; where pidfds are missing this is a plain
    wait. ``stop`` is looked at every 0.1 s. A zombie (exited, not yet reaped) counts as exited."""
    if not hasattr(os, "pidfd_open"):
        if stop is not None:
            stop.wait(timeout_secs)
        else:
            time.sleep(max(timeout_secs, 0.0))
        return []
    fds: dict[int, int] = {}
    try:
        for pid in set(pids):
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                return [pid]
            except OSError:
                continue  # not ours to watch (permissions, a kernel without pidfds): the next tick polls it
        deadline = time.monotonic() + timeout_secs
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return []
            if not fds:
                if stop is not None:
                    stop.wait(min(remaining, 0.1))
                else:
                    time.sleep(min(remaining, 0.1))
                continue
            ready, _, _ = select.select(list(fds), [], [], min(remaining, 0.1))
            if ready:
                return sorted(fds[fd] for fd in ready)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
