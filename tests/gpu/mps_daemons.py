"""The GPU tests' one way to run real MPS control daemons: start them, and always quit them and prove it.

``MpsDaemons`` collects the daemons a test starts (real ``nvidia-cuda-mps-control``); ``close()`` quits each
(killing it if it does not answer), kills whatever of its pipe dir survived and returns those leftovers.
``running_daemon`` is the one-daemon case as a context manager that asserts nothing was left. ``quit_all``
quits the daemons colo itself started under a root (a ``colo up`` / ``colo node`` run). ``CLIENT`` is a torch
child that reports what its context sees and tries the allocations it is given; ``Clients`` runs such
children and kills them at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psutil
import pytest

from colo.gpu.mps.control import SubprocessMpsControl, find_binary, scan_processes
from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults
from colo.gpu.mps.root import MpsRoot
from colo.gpu.nvml import GpuSnapshot, NvmlBackend

# A child CUDA client: creates its context, reports what it sees, tries the allocations it is given (argv[1],
# JSON; freeing each), holds 256 MiB so NVML shows it, then waits for a line on stdin.
CLIENT = r"""
import json, os, sys
import torch
probes = json.loads(sys.argv[1])
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info()
props = torch.cuda.get_device_properties(0)
res = {"pid": os.getpid(), "free": free, "total": total, "sms": props.multi_processor_count,
       "count": torch.cuda.device_count(), "uuid": str(getattr(props, "uuid", "") or ""), "allocs": []}
for n in probes:
    try:
        t = torch.empty(n, dtype=torch.uint8, device="cuda")
        t.fill_(1)
        torch.cuda.synchronize()
        res["allocs"].append([n, "ok"])
        del t
    except torch.cuda.OutOfMemoryError:
        res["allocs"].append([n, "oom"])
    except RuntimeError as exc:
        res["allocs"].append([n, "error: " + str(exc)[:300]])
    torch.cuda.empty_cache()
hold = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
hold.fill_(1)
torch.cuda.synchronize()
print(json.dumps(res), flush=True)
sys.stdin.readline()
"""


class Clients:
    """Child CUDA clients of one test; all killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, env_extra: Mapping[str, str], probes: Sequence[int]) -> subprocess.Popen[str]:
        """:data:`CLIENT` with ``probes``, in this process's environment without any MPS or GPU selection
        variable, plus ``env_extra`` (the client environment under test)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_MPS_", "CUDA_VISIBLE_DEVICES"))}
        env.update(env_extra)
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, json.dumps(list(probes))],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def report(proc: subprocess.Popen[str], timeout_secs: float = 180.0) -> dict[str, Any]:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_secs)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"client {proc.pid} gave no report (rc={proc.returncode}): {err[-2000:]}")
        data: dict[str, Any] = json.loads(line)
        return data

    @staticmethod
    def release(proc: subprocess.Popen[str], timeout_secs: float = 60.0) -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write("\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout_secs)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.communicate(timeout=30)


def gpus_with_mps() -> list[GpuSnapshot]:
    """The GPUs NVML sees; skips the test without the MPS control program or a GPU."""
    if find_binary() is None:
        pytest.skip("nvidia-cuda-mps-control is not installed")
    found = NvmlBackend().gpus()
    if not found:
        pytest.skip("NVML sees no GPU")
    return found


def gone(pid: int) -> bool:
    """Exited (a zombie counts: in a container, PID 1 may never reap a daemon's orphans)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class MpsDaemons:
    """Daemons a test starts; :meth:`close` quits each and returns what of them survived (killed by then)."""

    def __init__(self) -> None:
        self.daemons: list[MpsDaemon] = []
        self.server_pids: set[int] = set()

    def new(self, root: MpsRoot, uuid: str, **kw: Any) -> MpsDaemon:
        """A daemon of GPU ``uuid`` under ``root`` (not started), quit at :meth:`close`."""
        d = MpsDaemon(root.for_gpu(uuid), uuid, SubprocessMpsControl(), **kw)
        self.daemons.append(d)
        return d

    def note_servers(self, d: MpsDaemon) -> list[int]:
        """``d``'s server pids now, remembered so that :meth:`close` checks they exited."""
        pids = d.server_pids()
        self.server_pids.update(pids)
        return pids

    def close(self) -> list[str]:
        leftovers: list[str] = []
        for d in self.daemons:
            with contextlib.suppress(Exception):
                self.server_pids.update(d.server_pids())
            try:
                d.stop(timeout_secs=10)
            except Exception as exc:  # keep going: every daemon must be tried
                leftovers.append(f"stop failed for {d.gpu_uuid}: {exc}")
            for p in scan_processes(d.paths.pipe_dir):
                leftovers.append(f"{p.kind} {p.pid} of {d.paths.pipe_dir}")
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGKILL)
        for pid in self.server_pids:
            if not gone(pid):
                leftovers.append(f"server {pid}")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return leftovers


@contextlib.contextmanager
def running_daemon(root: MpsRoot, uuid: str, defaults: MpsDefaults | None = None) -> Iterator[MpsDaemon]:
    """GPU ``uuid``'s daemon under ``root``, started with ``defaults``; always quit, and nothing of its pipe
    dir may survive."""
    daemons = MpsDaemons()
    d = daemons.new(root, uuid)
    try:
        d.start(defaults)
        yield d
    finally:
        left = daemons.close()
        assert not left, f"MPS processes left behind: {left}"


def quit_all(root: MpsRoot) -> None:
    """Quit every daemon under ``root`` (those colo started there); never raises."""
    for uuid in root.gpu_uuids():
        with contextlib.suppress(Exception):
            MpsDaemon(root.for_gpu(uuid), uuid).stop(timeout_secs=5.0)
