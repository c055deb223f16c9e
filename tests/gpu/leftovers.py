"""What a GPU test leaves behind, and how it is cleaned away: zombies, processes of a state dir, MPS processes.

``zombies()`` lists every zombie here; ``mps_processes(under)`` the MPS daemons/servers whose pipe dir lies under
a directory; ``processes_mentioning(marker)`` the processes whose command line or environment names a marker
(a test's private temp dir); ``clean_state_dir(sd)`` quits a state dir's MPS daemons, kills what is left of it
and removes it. ``sweep()`` (``python3 tests/gpu/leftovers.py``, run by scripts/gpu_suite.sh and
scripts/gpu_smoke.sh after the tests) prints and kills, by pid, whatever colo process or MPS process of a
``/tmp`` pipe dir survived the tests: each one is a test's bug, so the scripts report them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil


class MpsProc(NamedTuple):
    """An MPS process: ``kind`` (control or server) and ``pid``."""

    kind: str
    pid: int


@dataclass(frozen=True)
class Zombie:
    pid: int
    name: str
    ppid: int

    def __str__(self) -> str:
        return f"{self.pid}:{self.name}(parent {self.ppid})"


def zombies() -> list[Zombie]:
    """Every zombie visible here (what ``ps -eo stat,comm`` shows as Z)."""
    out = []
    for proc in psutil.process_iter(["pid", "name", "ppid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            out.append(Zombie(int(proc.info["pid"]), str(proc.info["name"] or ""), int(proc.info["ppid"] or 0)))
    return out


def _under(path: str, base: str) -> bool:
    base = base.rstrip("/")
    return path == base or path.startswith(base + "/")


def mps_processes(under: Path | str | None = None) -> list[MpsProc]:
    """MPS daemons and servers, only those whose pipe dir lies under ``under`` when given."""
    from colo.gpu.mps.control import scan_processes

    return [
        MpsProc(str(p.kind), p.pid) for p in scan_processes(None) if under is None or _under(p.pipe_dir, str(under))
    ]


def _mentions(proc: psutil.Process, marker: str) -> bool:
    try:
        if marker in " ".join(proc.cmdline()):
            return True
        with contextlib.suppress(psutil.Error):
            return any(marker in v for v in proc.environ().values())
    except psutil.Error:
        pass
    return False


def processes_mentioning(marker: str) -> list[int]:
    """Pids of the processes (zombies and this process aside) whose command line or environment names
    ``marker``."""
    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if _mentions(proc, marker):
            out.append(proc.pid)
    return out


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def clean_state_dir(sd: Path) -> None:
    """Always, after a test: quit ``sd``'s MPS daemons, kill anything left that belongs to it, remove it."""
    from mps_daemons import quit_all

    from colo.gpu.mps.root import MpsRoot

    quit_all(MpsRoot.under_state_dir(sd))
    kill_pids(processes_mentioning(str(sd)))
    quit_all(MpsRoot.under_state_dir(sd))
    kill_pids([p.pid for p in mps_processes(sd)])
    shutil.rmtree(sd, ignore_errors=True)


RUN_VAR = "COLO_GPU_RUN"  # set by the scripts on the pytest processes only: every process a test starts inherits it


def survivors(run: str) -> list[str]:
    """Processes whose environment says they belong to the run ``run`` (``COLO_GPU_RUN``, set by the scripts on
    their pytest processes and inherited by whatever the tests start: MPS daemons and servers, colo up, the
    launcher, agents), as ``pid:command line``. The scripts themselves do not carry it."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(RUN_VAR) != run:
                continue
        except psutil.Error:
            continue
        out.append(f"{proc.pid}:{' '.join(proc.info['cmdline'] or [])[:120]}")
    return out


def sweep(run: str) -> list[str]:
    """Print and SIGKILL (by pid) every survivor of the run ``run``; returns them."""
    found = survivors(run)
    print(f"== leftover processes after the tests: {len(found) or 'none'}")
    for line in found:
        print(f"   {line}")
    kill_pids([int(line.split(":", 1)[0]) for line in found])
    z = [str(x) for x in zombies() if "nvidia-cuda-mps" in x.name or "python" in x.name]
    if z:
        print(f"   zombies (MPS or python): {' '.join(z)}")
    return found


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1]:
        print("usage: python3 tests/gpu/leftovers.py RUN   (the COLO_GPU_RUN value the tests ran with)", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sweep(sys.argv[1])
