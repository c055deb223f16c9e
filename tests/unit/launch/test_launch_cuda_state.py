"""The launcher's fork guard: a CUDA driver that is only mapped lets it fork, an initialised one does not.

A fake ``libcuda.so.1`` (a few lines of C, built here with the system's C compiler) answers
``cuDeviceGetCount`` as the real driver does: ``CUDA_ERROR_NOT_INITIALIZED`` (3) before ``cuInit``, 0 after.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from colo.launch import forkserver
from colo.launch.cuda_state import Driver, DriverState, driver_state, mapped_libcuda
from testkit import child_env

FAKE_LIBCUDA_C = r"""
static int initialised = 0;
int cuInit(unsigned int flags) { (void)flags; initialised = 1; return 0; }
int cuDeviceGetCount(int *count) {
    if (!initialised) return 3; /* CUDA_ERROR_NOT_INITIALIZED, count untouched */
    *count = 1;
    return 0;
}
"""

MAPS_LINE = "7f00-7f10 r-xp 00000000 08:01 42   {path}\n"


def fake_maps(tmp_path: Path, path: str | None) -> str:
    maps = tmp_path / "maps"
    lines = "55d0-55d1 r--p 00000000 08:01 1   /usr/bin/python3.12\n"
    if path is not None:
        lines += MAPS_LINE.format(path=path)
    maps.write_text(lines, encoding="utf-8")
    return str(maps)


class FakeLib:
    """What ctypes.CDLL returns for the driver, answering cuDeviceGetCount with ``result``."""

    def __init__(self, result: int) -> None:
        self.result = result

    def cuDeviceGetCount(self, count: Any) -> int:
        return self.result


def test_not_mapped_mapped_initialised_and_unknown(tmp_path: Path) -> None:
    lib_path = "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04"
    assert driver_state(maps_path=fake_maps(tmp_path, None)).driver is Driver.NOT_MAPPED
    assert mapped_libcuda(fake_maps(tmp_path, lib_path)) == lib_path

    opened: list[str] = []

    def opener(result: int) -> Any:
        def open_lib(name: str) -> FakeLib:
            opened.append(name)
            return FakeLib(result)

        return open_lib

    mapped = driver_state(maps_path=fake_maps(tmp_path, lib_path), lib_opener=opener(3))
    assert mapped == DriverState(Driver.MAPPED, lib_path) and mapped.driver.fork_safe
    assert opened == [lib_path]  # the mapped file itself, not a fresh load by name
    initialised = driver_state(maps_path=fake_maps(tmp_path, lib_path), lib_opener=opener(0))
    assert initialised.driver is Driver.INITIALISED and not initialised.driver.fork_safe
    odd = driver_state(maps_path=fake_maps(tmp_path, lib_path), lib_opener=opener(999))
    assert odd.driver is Driver.UNKNOWN and "999" in odd.detail and not odd.driver.fork_safe

    def refuse(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    unopenable = driver_state(maps_path=fake_maps(tmp_path, lib_path), lib_opener=refuse)
    assert unopenable.driver is Driver.UNKNOWN and "cannot open" in unopenable.describe()
    assert driver_state(maps_path=str(tmp_path / "no-such-maps")).driver is Driver.NOT_MAPPED


def test_fork_blocker_lets_a_mapped_driver_fork_but_not_an_initialised_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test process may run threads of earlier tests: a single-threaded launcher is what is pretended here
    # (a fresh interpreter is the real one, below).
    monkeypatch.setattr(forkserver, "_threads_now", lambda: 1)
    monkeypatch.setattr(forkserver.threading, "active_count", lambda: 1)

    def state(driver: Driver) -> Any:
        return lambda: DriverState(driver, "/x/libcuda.so.1")

    assert forkserver.fork_blocker(state(Driver.NOT_MAPPED)) is None
    assert forkserver.fork_blocker(state(Driver.MAPPED)) is None
    assert "initialised" in (forkserver.fork_blocker(state(Driver.INITIALISED)) or "")
    assert "unknown" in (forkserver.fork_blocker(state(Driver.UNKNOWN)) or "")
    monkeypatch.setattr(forkserver, "_threads_now", lambda: 3)
    assert "3 threads" in (forkserver.fork_blocker(state(Driver.NOT_MAPPED)) or "")


CHILD = r"""
import ctypes, json, sys
from colo.launch.cuda_state import driver_state
from colo.launch.forkserver import fork_blocker
out = {"before": driver_state().driver.name}
lib = ctypes.CDLL(sys.argv[1])  # maps the fake driver, as torch's preloads map the real one
out["mapped"] = driver_state().driver.name
out["blocker_mapped"] = fork_blocker()
lib.cuInit(0)
out["initialised"] = driver_state().driver.name
out["blocker_initialised"] = fork_blocker()
print(json.dumps(out))
"""


def test_a_real_mapped_library_is_asked_with_rtld_noload(tmp_path: Path) -> None:
    """In a fresh interpreter: map a fake libcuda.so.1, then call its cuInit: NOT_MAPPED -> MAPPED (fork
    allowed) -> INITIALISED (fork refused), through the real /proc/self/maps and dlopen(RTLD_NOLOAD)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake libcuda.so.1")
    src = tmp_path / "fake_libcuda.c"
    src.write_text(FAKE_LIBCUDA_C, encoding="utf-8")
    lib = tmp_path / "libcuda.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(lib)], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["before"] == "NOT_MAPPED"
    assert got["mapped"] == "MAPPED" and got["blocker_mapped"] is None
    assert got["initialised"] == "INITIALISED"
    assert "cuDeviceGetCount answers 1 device" in got["blocker_initialised"]


def test_fork_blocker_ignores_jemallocs_background_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU machine's Python runs on jemalloc, whose purging thread (``jemalloc_bg_thd``) appears after
    ``import transformers``: fork-safe (jemalloc's own atfork handlers), so it does not stop a fork; any other
    OS thread does, and the blocker names it."""
    monkeypatch.setattr(forkserver.threading, "active_count", lambda: 1)
    monkeypatch.setattr(forkserver, "_threads_now", lambda: 2)
    mapped = lambda: DriverState(Driver.MAPPED, "/x/libcuda.so.1")  # noqa: E731
    monkeypatch.setattr(forkserver, "thread_names", lambda: ["674:jemalloc_bg_thd"])
    assert forkserver.fork_blocker(mapped) is None
    monkeypatch.setattr(forkserver, "thread_names", lambda: ["675:cuda-EvtHandlr"])
    assert "675:cuda-EvtHandlr" in (forkserver.fork_blocker(mapped) or "")
    monkeypatch.setattr(forkserver, "_threads_now", lambda: 3)
    monkeypatch.setattr(forkserver, "thread_names", lambda: ["674:jemalloc_bg_thd", "676:worker"])
    assert "676:worker" in (forkserver.fork_blocker(mapped) or "")
