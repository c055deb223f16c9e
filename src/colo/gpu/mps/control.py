"""The narrow door to ``nvidia-cuda-mps-control``: a Protocol, and the real runner behind it.

:class:`colo.gpu.mps.daemon.MpsDaemon` drives a daemon only through :class:`MpsControl`, so it is tested on CPU
with :class:`colo.gpu.mps.fake.FakeMpsControl`. The real :class:`SubprocessMpsControl`:

- starts a daemon: ``nvidia-cuda-mps-control -d`` with the pipe/log dirs (and ``CUDA_VISIBLE_DEVICES``) in
  its environment; its output goes to a file, never a pipe, because the forked daemon would keep a pipe open;
- sends one command: ``echo "<cmd>" | nvidia-cuda-mps-control`` with the same environment, under a timeout;
- finds the control and server processes of a pipe dir with ``colo.gpu.procs`` (the daemon's pid file, then each MPS
  process's ``CUDA_MPS_PIPE_DIRECTORY``), and signals them for the last-resort kill;
- reaps: ``-d`` forks the daemon and the launcher exits (``start_daemon`` waits for the launcher), so the daemon
  is nobody's child but PID 1's — and a container's PID 1 may never reap, leaving ``[nvidia-cuda-mps]
  <defunct>`` behind. The orchestrator makes itself a child subreaper (``colo.gpu.procs.become_subreaper``)
  before it starts daemons, so daemons (and a killed daemon's servers) become its children, and
  :meth:`SubprocessMpsControl.reap` collects those that ended.

Raises: MpsError (exit 2) — binary missing, command timed out or failed.
"""

from __future__ import annotations

import os
import shutil
import signal as _signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from colo.errors import MpsError
from colo.gpu import procs
from colo.gpu.mps.env import pipe_dir_of

CONTROL_BIN = "nvidia-cuda-mps-control"
SERVER_BIN = "nvidia-cuda-mps-server"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
PID_FILE = "nvidia-cuda-mps-control.pid"
#: The kernel's 15-character name (``comm``) of both the control daemon and the server: what a zombie shows.
MPS_COMM = "nvidia-cuda-mps"
# Where drivers put the binary when it is not on PATH (container images, runfile installs).
_EXTRA_BIN_DIRS = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin", "/usr/local/cuda/bin")

ProcessKind = Literal["control", "server"]


@dataclass(frozen=True)
class MpsProcess:
    """An MPS control daemon or server process found on this machine."""

    pid: int
    kind: ProcessKind
    pipe_dir: str
    visible_devices: str | None
    uid: int | None
    cmdline: tuple[str, ...] = ()


@runtime_checkable
class MpsControl(Protocol):
    """How colo reaches MPS. Every method raises MpsError on failure."""

    def send(self, command: str, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> str:
        """Send one command line to the daemon named by ``env``'s pipe dir; its reply text."""
        ...

    def start_daemon(self, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> None:
        """Run ``nvidia-cuda-mps-control -d`` with ``env``; returns when the launcher has exited."""
        ...

    def find_processes(self, pipe_dir: Path | None = None) -> list[MpsProcess]:
        """MPS control daemons and servers; only those of ``pipe_dir`` when given."""
        ...

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid`` (gone already: not an error)."""
        ...

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` still runs (a zombie counts as gone)."""
        ...

    def stopped(self, pid: int) -> bool:
        """Whether ``pid`` is stopped (SIGSTOP, ``ps`` stat ``T``): alive, but it answers nothing (hung)."""
        ...

    def start_time(self, pid: int) -> float | None:
        """When ``pid`` started (epoch seconds), to tell it from a later process with the same pid; None when
        it is gone or not visible."""
        ...

    def reap(self) -> list[int]:
        """Collect every MPS process that ended as a child of this process (a daemon or server orphaned to it
        when it is a child subreaper): their pids. Never raises."""
        ...


def find_binary(name: str = CONTROL_BIN) -> str | None:
    """Path of ``name`` on PATH or in the usual driver directories; None if absent."""
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_BIN_DIRS:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a.rstrip("/") or "/") == os.path.realpath(b.rstrip("/") or "/")


def _kind_of(view: procs.ProcessView) -> ProcessKind | None:
    names = []
    if view.exe:
        names.append(os.path.basename(view.exe))
    cmdline = list(view.cmdline)
    if cmdline:
        names.append(os.path.basename(cmdline[0]))
    names.append(view.name)
    for n in names:
        if n.startswith("nvidia-cuda-mps-server"):
            return "server"
        if n.startswith("nvidia-cuda-mps-control"):
            # Without -d/-f it is an interactive client (someone's `echo cmd | nvidia-cuda-mps-control`).
            if cmdline and not ({"-d", "-f"} & set(cmdline[1:])):
                return None
            return "control"
        if n == "nvidia-cuda-mps":  # the kernel's 15-character comm, cmdline unreadable
            return "control"
    return None


def scan_processes(pipe_dir: Path | None = None) -> list[MpsProcess]:
    """MPS daemons and servers visible here (``colo.gpu.procs``), filtered to ``pipe_dir`` when given."""
    out: list[MpsProcess] = []
    for view in procs.scan("nvidia-cuda-mps"):
        kind = _kind_of(view)
        if kind is None:
            continue
        pdir = pipe_dir_of(view.environ) or DEFAULT_PIPE_DIR
        if pipe_dir is not None and not _same_dir(pdir, str(pipe_dir)):
            continue
        out.append(
            MpsProcess(
                pid=view.pid,
                kind=kind,
                pipe_dir=pdir,
                visible_devices=view.environ.get("CUDA_VISIBLE_DEVICES"),
                uid=view.uid,
                cmdline=view.cmdline,
            )
        )
    return sorted(out, key=lambda p: p.pid)


def _run(
    argv: list[str], *, timeout_secs: float, timeout_error: MpsError, **kw: Any
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, **kw)`` with the two ways it fails as MpsError: ``timeout_error`` past
    ``timeout_secs``, a binary that cannot run. A non-zero exit is the caller's to judge."""
    try:
        return subprocess.run(argv, timeout=timeout_secs, check=False, **kw)
    except subprocess.TimeoutExpired as exc:
        raise timeout_error from exc
    except OSError as exc:
        raise MpsError(f"cannot run {argv[0]}: {exc.strerror or exc}", hint="check the binary") from exc


class SubprocessMpsControl:
    """The real :class:`MpsControl`: runs ``nvidia-cuda-mps-control`` (found on PATH unless ``binary``)."""

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary

    def binary(self) -> str:
        """Path of the control program. Raises MpsError when it is not installed."""
        if self._binary is None:
            found = find_binary()
            if found is None:
                raise MpsError(
                    f"{CONTROL_BIN} was not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}",
                    hint="install the NVIDIA driver's compute utilities (nvidia-compute-utils) or add the "
                    "directory holding it to PATH",
                )
            self._binary = found
        elif not (Path(self._binary).is_file() and os.access(self._binary, os.X_OK)):
            raise MpsError(f"{self._binary} is not an executable file", hint=f"point colo at {CONTROL_BIN}")
        return self._binary

    def send(self, command: str, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> str:
        """``echo "<command>" | nvidia-cuda-mps-control``. Raises MpsError (timeout, non-zero exit)."""
        binary = self.binary()
        pipe_dir = pipe_dir_of(env) or DEFAULT_PIPE_DIR
        done = _run(
            [binary],
            timeout_secs=timeout_secs,
            timeout_error=MpsError(
                f"the MPS control daemon in {pipe_dir} did not answer {command!r} within {timeout_secs:g} s",
                hint="it may be hung: `colo mps stop` kills it if `quit` is not answered",
            ),
            input=command + "\n",
            env=dict(env),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip().replace("\n", " ")
            raise MpsError(
                f"{CONTROL_BIN} exited with status {done.returncode} for {command!r} in {pipe_dir}"
                + (f": {said}" if said else ""),
                hint="is a control daemon running in that pipe dir? `colo mps status` shows it",
            )
        return str(done.stdout)

    def start_daemon(self, *, env: Mapping[str, str], timeout_secs: float = 10.0) -> None:
        """``nvidia-cuda-mps-control -d``. Raises MpsError (timeout, non-zero exit, with its output)."""
        binary = self.binary()
        # A file, not a pipe: the daemon forks and would hold a pipe open until it exits.
        with tempfile.TemporaryFile(mode="w+") as out:
            done = _run(
                [binary, "-d"],
                timeout_secs=timeout_secs,
                timeout_error=MpsError(
                    f"`{CONTROL_BIN} -d` did not return within {timeout_secs:g} s",
                    hint="check the log dir's control.log",
                ),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.seek(0)
            said = out.read().strip().replace("\n", " ")
        if done.returncode != 0:
            raise MpsError(
                f"`{CONTROL_BIN} -d` exited with status {done.returncode}" + (f": {said}" if said else ""),
                hint="another daemon may hold the pipe dir, or the GPU is not visible; see control.log",
            )

    def find_processes(self, pipe_dir: Path | None = None) -> list[MpsProcess]:
        return scan_processes(pipe_dir)

    def signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise MpsError(
                f"no permission to signal MPS process {pid}", hint="run as the user (or root) that started it"
            ) from exc

    def alive(self, pid: int) -> bool:
        return procs.is_alive(pid, denied_is_alive=True)

    def stopped(self, pid: int) -> bool:
        return procs.is_stopped(pid)

    def start_time(self, pid: int) -> float | None:
        return procs.create_time(pid)

    def reap(self) -> list[int]:
        return procs.reap_children(MPS_COMM)


SIGTERM = int(_signal.SIGTERM)
SIGKILL = int(_signal.SIGKILL)
