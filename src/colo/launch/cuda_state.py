"""Is the CUDA driver initialised in this process? What the launcher asks before every fork.

A process may fork safely with ``libcuda`` *mapped* (``import torch`` of a CUDA 13 build, or one of the libraries
it preloads, maps it on a GPU machine) as long as the driver was never *initialised* (no ``cuInit``): the child
initialises its own. An initialised driver (a context, driver threads, handles to the device) never survives a
fork. So the test is "initialised", asked of the driver itself without side effects:

- ``/proc/self/maps`` says whether (and from which file) ``libcuda`` is mapped; not mapped means not initialised;
- if it is, the mapped library is opened again with ``RTLD_NOLOAD`` (nothing new is loaded) and asked
  ``cuDeviceGetCount``: before ``cuInit`` it answers ``CUDA_ERROR_NOT_INITIALIZED`` (3) and changes nothing;
  ``CUDA_SUCCESS`` (0) means initialised; any other answer (or no answer) counts as initialised: when in doubt,
  the launcher spawns.

:func:`driver_state` returns a :class:`DriverState`; ``lib_opener`` and ``maps_path`` are injectable so CPU tests
drive it with a fake driver.
"""

from __future__ import annotations

import ctypes
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The driver library's soname (what the CUDA runtime and torch dlopen).
LIBCUDA = "libcuda.so.1"
#: ``CUresult`` values this module reads.
CUDA_SUCCESS = 0
CUDA_ERROR_NOT_INITIALIZED = 3

LibOpener = Callable[[str], Any]


class Driver(enum.Enum):
    """The CUDA driver in this process, as far as forking is concerned."""

    NOT_MAPPED = "not mapped"  # libcuda is not in the process: safe
    MAPPED = "mapped, not initialised"  # loaded but never cuInit'ed: safe
    INITIALISED = "initialised"  # cuInit ran: never fork
    UNKNOWN = "unknown"  # mapped, but the driver's answer cannot be read: treated as initialised

    @property
    def fork_safe(self) -> bool:
        return self in (Driver.NOT_MAPPED, Driver.MAPPED)


@dataclass(frozen=True)
class DriverState:
    """What :func:`driver_state` found: the state, the mapped file (if any), and a human detail."""

    driver: Driver
    path: str | None = None
    detail: str = ""

    def describe(self) -> str:
        """``"libcuda mapped, not initialised (/usr/lib/.../libcuda.so.580.1)"``."""
        where = f" ({self.path})" if self.path else ""
        extra = f": {self.detail}" if self.detail else ""
        return f"libcuda {self.driver.value}{where}{extra}"


def mapped_libcuda(maps_path: str = "/proc/self/maps") -> str | None:
    """The path of the ``libcuda.so*`` mapped into this process, or None (also when ``maps_path`` is
    unreadable)."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libcuda.so"):
                    return fields[5].strip()
    except OSError:
        return None
    return None


def _open_loaded(path: str) -> Any:
    """dlopen ``path`` only if it is already loaded (``RTLD_NOLOAD``); raises OSError otherwise."""
    return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)


def driver_state(*, maps_path: str = "/proc/self/maps", lib_opener: LibOpener = _open_loaded) -> DriverState:
    """Whether the CUDA driver is initialised in this process (see the module docstring). Never loads the
    driver, never initialises it, never raises."""
    path = mapped_libcuda(maps_path)
    if path is None:
        return DriverState(Driver.NOT_MAPPED)
    lib = None
    errors = []
    for name in (path, LIBCUDA):
        try:
            lib = lib_opener(name)
            break
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    if lib is None:
        return DriverState(Driver.UNKNOWN, path, "cannot open the mapped library again: " + "; ".join(errors))
    try:
        get_count = lib.cuDeviceGetCount
        count = ctypes.c_int(-1)
        result = int(get_count(ctypes.byref(count)))
    except (AttributeError, OSError, TypeError, ValueError) as exc:
        return DriverState(Driver.UNKNOWN, path, f"cuDeviceGetCount could not be called ({exc})")
    if result == CUDA_ERROR_NOT_INITIALIZED:
        return DriverState(Driver.MAPPED, path)
    if result == CUDA_SUCCESS:
        return DriverState(Driver.INITIALISED, path, f"cuDeviceGetCount answers {count.value} device(s)")
    return DriverState(Driver.UNKNOWN, path, f"cuDeviceGetCount returned CUresult {result}")
