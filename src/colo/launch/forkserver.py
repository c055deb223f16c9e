"""The pre-imported launcher (a "zygote") of the built-in agent: ``python -m colo.launch.forkserver``.

Plain spawning pays ``import torch``, ``import transformers`` and the HTTP stack in every agent (seconds each
time an agent restarts). The zygote is one long-lived process that does those imports once
(:func:`colo.modelserver.serve.import_modules`; the model classes of a config's agents on its first request for
that config), **never initialises CUDA**, and forks one child per built-in agent on request. The child becomes
a session leader, sets its environment (the MPS client settings, ``CUDA_VISIBLE_DEVICES``, the agent's
``env``), points stdout/stderr at the agent's log and runs the agent's ``main``: CUDA is first initialised
there, after the environment is set. :class:`colo.launch.fork_runner.ForkRunner` starts and talks to it.

The zygote is the children's parent: it reaps them and sends ``(pid, exit status)`` over its control pipe (the
exit code matters: ``EXIT_CONTEXT_LOST`` restarts an agent at once, 3 means out of memory; a double fork would
lose it). When the runner closes the pipe (the orchestrator stopped or died) the zygote exits; its children
keep running, re-parented, and are re-adopted by pid and start time like spawned agents.

Forking only from a single-threaded process with no initialised CUDA driver is safe: before every fork the
zygote checks (:func:`fork_blocker`) that it has one OS thread (``/proc/self/task``), one Python thread, no torch
CUDA state and no *initialised* CUDA driver (:mod:`colo.launch.cuda_state`: on a GPU machine ``import torch``
maps ``libcuda`` without initialising it, which is harmless; the driver itself is asked). When in doubt it does
not fork, and says why: the agent is spawned and its ``started`` event names the reason. It logs the driver's
state after each import step (``launcher import torch: libcuda mapped, not initialised (...) (mapped by import
torch)``). It runs with :data:`ZYGOTE_ENV_DEFAULTS` (numpy's OpenBLAS otherwise starts a worker thread at
import; torch's NVML-based ``is_available()`` never initialises the driver).

While idle (no fork request for :data:`PREBUILD_QUIET_SECS`) the zygote imports the config's model classes,
then builds on the CPU, once per config version, each model of the agents it forked that has weights on disk
(:class:`Preloader`, :func:`colo.memory.build.prebuild`, within :data:`PREBUILD_MAX_MODEL_BYTES` each and
:data:`PREBUILD_MAX_BYTES` in all; a random-weight model is filled on the agent's device faster than a copy
moves there), with torch single-threaded (each child gets its thread count back); agents forked later — a
restart, a second agent of the same model — inherit them copy-on-write and only move them to their device
(:func:`colo.memory.build.take_prebuilt`). The zygote never tokenises (no tokenizers thread pool).

Control protocol (JSON lines on the zygote's stdin and stdout, both pipes to the runner):
``{"id", "argv", "env", "cwd", "log"}`` asks for a child; the zygote answers ``{"id", "pid"}`` or
``{"id", "error"}``, says ``{"ready": true, "import_secs": {...}, "blocker": null, "driver": "...", "libcuda_mapped_by":
"torch"}`` once after its imports,
and ``{"exit": pid, "code": c, "signal": s}`` whenever it reaps a child. ``{"log_to": PATH}`` (no answer) moves
its log there (a zygote started with ``--early-log FILE`` before the state dir was known: :func:`move_log`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from colo.launch.cuda_state import Driver, DriverState, driver_state
from colo.modelserver.command import MODULE as BUILTIN_AGENT_MODULE
from colo.units import GIB

if TYPE_CHECKING:
    from colo.spec.config import ColoConfig, ModelSpec

MODULE = "colo.launch.forkserver"

#: Set in the zygote's environment (and so its children's) unless the orchestrator's environment sets them:
#: libraries that would otherwise start worker threads at import time.
ZYGOTE_ENV_DEFAULTS: dict[str, str] = {
    "OPENBLAS_NUM_THREADS": "1",
    # torch.cuda.is_available() asks NVML instead of initialising the CUDA driver (torch's fork-safe check).
    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
}
#: The largest model the zygote prebuilds (bytes of parameters and buffers), and the most it holds in all.
PREBUILD_MAX_MODEL_BYTES = 2 * GIB
PREBUILD_MAX_BYTES = 8 * GIB
#: The zygote builds a queued model only after this many seconds without a fork request: `colo up` (and a
#: recovery) asks for every agent in a burst, and a build between two of its forks (0.3-0.6 s for a base-size
#: model on the H100 host) would hold every fork after it — 3.3 s of the sized newsroom's start.
PREBUILD_QUIET_SECS = 2.0
#: Variables read when a process starts (interpreter, dynamic loader, thread pools): a child whose value differs
#: from the zygote's cannot be forked from it and is spawned plainly.
EXEC_TIME_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH_", "PYTORCH_")
#: The launcher's option naming the temporary file its stderr goes to until the runner sends ``{"log_to": PATH}``
#: (a launcher started before ``colo up`` knew its state dir: :mod:`colo.launch.prestart`).
EARLY_LOG_OPTION = "--early-log"
#: ``python -m MODULE`` entry points the zygote calls directly (their ``__main__`` block is ``sys.exit(main())``);
#: other modules run through ``runpy``.
ENTRY_POINTS = {BUILTIN_AGENT_MODULE: "main"}


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _threads_now() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


#: OS threads that do not stop a fork, by name (``comm``): jemalloc's background purging thread (the GPU
#: machine's Python runs on jemalloc; seen on the H100 after ``import transformers``). jemalloc takes every lock
#: of its own in a ``pthread_atfork`` handler before the fork, and in the child re-initialises them and turns
#: background threads off (``background_thread_postfork_child``): the child never inherits a held allocator
#: lock, and its allocator purges inline instead.
FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})


def _fork_safe_threads() -> list[str]:
    return [t for t in thread_names() if not t.startswith("py:") and t.split(":", 1)[1] in FORK_SAFE_THREADS]


def thread_names() -> list[str]:
    """The threads of this process other than the main one: each Python thread as ``py:name``, then each OS
    thread as ``tid:comm`` (what ``ps -T`` shows)."""
    out = [f"py:{t.name}" for t in threading.enumerate() if t is not threading.main_thread()]
    try:
        tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return out
    for tid in tids:
        if tid == os.getpid():
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
                out.append(f"{tid}:{f.read().strip()}")
        except OSError:
            out.append(f"{tid}:?")
    return out


def fork_blocker(driver: Callable[[], DriverState] = driver_state) -> str | None:
    """Why this process must not fork now, or None when it may: more than one thread (OS or Python; jemalloc's
    background thread aside, :data:`FORK_SAFE_THREADS`), torch's
    CUDA state initialised, or the CUDA driver initialised (or its state unreadable: when in doubt, spawn).
    A ``libcuda`` that is only mapped does not block (see :mod:`colo.launch.cuda_state`)."""
    if threading.active_count() != 1 or _threads_now() - len(_fork_safe_threads()) != 1:
        return (
            f"the launcher has {_threads_now()} threads ({', '.join(thread_names()) or 'Python threads'}); "
            "it forks only when single-threaded"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in the launcher (torch.cuda.is_initialized())"
    state = driver()
    if not state.driver.fork_safe:
        return f"the CUDA driver is not fork-safe in the launcher: {state.describe()}"
    return None


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _run_argv(argv: Sequence[str]) -> int:
    """Run ``python -m MODULE args...`` or ``python -c CODE args...`` in this (forked) interpreter."""
    import builtins
    import importlib
    import runpy
    import traceback

    try:
        if argv[1] == "-m":
            module, args = argv[2], list(argv[3:])
            sys.argv = [module, *args]
            sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
            entry = ENTRY_POINTS.get(module)
            if entry is not None:
                result = getattr(importlib.import_module(module), entry)(args)
                return int(result) if result is not None else 0
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:  # "-c"
            sys.argv = ["-c", *argv[3:]]
            exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 128 + int(signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        return 1


def _become_child(req: dict[str, Any], log_fd: int, devnull: int, inherited: Sequence[int]) -> int:
    """In the forked child: a session of its own, the agent's stdio, environment and directory; then run it."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    for fd in (log_fd, devnull, *inherited):
        with contextlib.suppress(OSError):
            os.close(fd)
    os.environ.clear()
    os.environ.update(req["env"])
    if req.get("cwd"):
        os.chdir(req["cwd"])
    return _run_argv(req["argv"])


def _fork(req: dict[str, Any], inherited: Sequence[int], child_setup: Callable[[], None] = lambda: None) -> int:
    """Fork one child for ``req``; its pid. Raises OSError/ValueError when it cannot (nothing is started)."""
    blocker = fork_blocker()
    if blocker is not None:
        raise ValueError(blocker)
    argv = req["argv"]
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        raise ValueError(f"not a `python -m`/`-c` command: {argv!r}")
    if req.get("cwd") and not os.path.isdir(req["cwd"]):
        raise ValueError(f"cwd {req['cwd']!r} is not a directory")
    log_fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = os.fork()
        if pid == 0:  # the child never returns into the zygote's loop
            code = 1
            try:
                child_setup()
                code = _become_child(req, log_fd, devnull, inherited)
            finally:
                with contextlib.suppress(BaseException):
                    logging.shutdown()
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        return pid
    finally:
        os.close(log_fd)
        os.close(devnull)


def _arg(argv: Sequence[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


class Preloader:
    """What the zygote prepares for the built-in agents of one config (per version of the file): their model
    classes imported, and each of their models built once on the CPU (:func:`colo.memory.build.prebuild`) so
    forked agents inherit them copy-on-write and only move them to their device. Both happen while the zygote
    is idle (:meth:`build_one`), never before a fork: an agent forked before that imports its classes, or
    builds its model, itself. torch runs single-threaded here (its intra-op
    thread count is given back in each child, :meth:`child_setup`), and ``fork_blocker`` is asked after each
    build. Never raises: an agent reports its own load errors."""

    def __init__(self, max_model_bytes: int = PREBUILD_MAX_MODEL_BYTES, max_bytes: int = PREBUILD_MAX_BYTES) -> None:
        self.max_model_bytes = max_model_bytes
        self.max_bytes = max_bytes
        self.config_key: str | None = None
        self.config: ColoConfig | None = None
        self.pending: list[tuple[str, str, str | None]] = []
        self.to_import: tuple[str, list[tuple[str, ModelSpec]]] | None = None  # (config path, its models)
        self.held: dict[tuple[str, str, str | None], int] = {}  # built models and their bytes
        self.skipped: set[tuple[str, str, str | None]] = set()
        self.torch_threads: int | None = None  # torch's thread count before the zygote set it to 1

    def before_fork(self, argv: Sequence[str]) -> None:
        """For a fork request with ``argv``: on a new config (or a new version of it) import its model
        classes and forget the models of the old one; queue the agent's models for building."""
        if len(argv) < 3 or list(argv[1:3]) != ["-m", BUILTIN_AGENT_MODULE]:
            return
        path = _arg(argv, "--config")
        if path is None:
            return
        try:
            key = f"{path}@{os.stat(path).st_mtime_ns}"
            from colo.memory.build import keep_prebuilt
            from colo.spec import load_config

            if key != self.config_key:
                loaded = load_config(path)
                self.config_key, self.config = key, loaded
                specs = config_models(loaded)
                # Imported while idle, like the builds: the agents of this burst import their own classes (at
                # once, in parallel), not one after another in here before each is forked. (Nothing to do when
                # the launcher was started with the config's models, ``--models-of``.)
                self.to_import = (path, specs)
                wanted: set[tuple[str, str, str | None]] = {(m, spec.dtype, spec.path) for m, spec in specs}
                keep_prebuilt(wanted)
                self.held = {k: v for k, v in self.held.items() if k in wanted}
                self.pending = [k for k in self.pending if k in wanted]
            config = self.config
            agent = config.agents.get(_arg(argv, "--agent") or "") if config is not None else None
            if config is None or agent is None:
                return
            dtype = _arg(argv, "--dtype")
            for model_id in agent.models:
                spec = config.models.get(model_id)
                if spec is None:
                    continue
                want = (model_id, dtype or spec.dtype, spec.path)
                if want not in self.held and want not in self.skipped and want not in self.pending:
                    if _has_weights_on_disk(model_id, spec.path):
                        self.pending.append(want)
                    else:  # random weights: the agent fills them on its device faster than it copies them there
                        self.skipped.add(want)
        except Exception as exc:  # the child loads (and reports) for itself
            say(f"preloading for {path} failed: {exc}")

    def has_work(self) -> bool:
        """Whether there is something to do while idle: model classes to import, models to build."""
        return self.to_import is not None or bool(self.pending)

    def build_one(self) -> None:
        """Do the next idle task (the zygote is idle): import the config's model classes, else build the next
        queued model. A model that fails, or does not fit the budget, is skipped for good (its agents build it
        themselves)."""
        if self.to_import is not None:
            config_path, specs = self.to_import
            self.to_import = None
            _import_classes(config_path, lambda: specs)
            return
        if not self.pending:
            return
        key = self.pending.pop(0)
        model_id, dtype, path = key
        try:
            import torch

            from colo.memory.build import prebuild

            if self.torch_threads is None:
                self.torch_threads = torch.get_num_threads()
                torch.set_num_threads(1)  # a fill with several threads would start a pool: no more forks
            started = time.perf_counter()
            left = self.max_bytes - sum(self.held.values())
            size = prebuild(model_id, dtype=dtype, path=path, max_bytes=min(self.max_model_bytes, left))
            self.held[key] = size
            say(f"prebuilt {model_id} ({dtype}, {size >> 20} MiB) in {time.perf_counter() - started:.2f}s")
        except Exception as exc:
            self.skipped.add(key)
            say(f"not prebuilding {model_id} ({dtype}): {exc}")
        blocker = fork_blocker()
        if blocker is not None:
            say(f"after prebuilding {model_id}: {blocker}")

    def child_setup(self) -> None:
        """In a forked child: give torch back the thread count the zygote took from it."""
        torch = sys.modules.get("torch")
        if torch is not None and self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)


def config_models(config: ColoConfig) -> list[tuple[str, ModelSpec]]:
    """The models of ``config``'s agents, by id: what the launcher imports the classes of."""
    return sorted({m: config.models[m] for a in config.agents.values() for m in a.models if m in config.models}.items())


def import_models_of(config_path: str) -> float:
    """Import the model classes of the config at ``config_path`` (the launcher's ``--models-of``, before it
    says ready: the agents of ``colo up``'s first burst are then forked with their classes imported — each
    imported its own in 0.7-0.9 s, nine at once, against 0.4 s for all of them here, on the H100 host).
    Returns the seconds spent; never raises (the agents import, and report, for themselves)."""
    from colo.spec import load_config

    started = time.perf_counter()
    _import_classes(config_path, lambda: config_models(load_config(config_path)))
    return time.perf_counter() - started


def _import_classes(config_path: str, specs: Callable[[], list[tuple[str, ModelSpec]]]) -> None:
    """Import the model classes of ``specs()`` (the models of the config at ``config_path``) and say so in one
    line; a failure (the config or an import) is said, never raised: the agents import, and report, for
    themselves."""
    try:
        from colo.modelserver.serve import import_modules

        models = specs()
        spent = import_modules(models)
    except Exception as exc:
        say(f"importing the model classes of {config_path} failed: {exc}")
    else:
        say(f"preloaded {len(models)} model class(es) of {config_path}: {secs_text(spent)}")


def _has_weights_on_disk(model_id: str, path: str | None) -> bool:
    """Whether ``model_id`` loads real weights from disk (its ``path``, or the HF cache). Only those are worth
    prebuilding: a random-weight model is built on the agent's device in 0.01-0.1 s, where moving a prebuilt
    copy there took 0.4 s (the sized newsroom's agents under MPS, H100, 2026-12-06)."""
    from colo.memory.build import resolve_source

    try:
        return resolve_source(model_id, path=path).weights_dir is not None
    except Exception:  # the agent reports it
        return False


class DriverWatch:
    """After each import step of the zygote: is ``libcuda`` mapped now, and did this step map it? (One log
    line per step: on a GPU machine, which import maps the driver, and whether anything initialised it.)"""

    def __init__(self, driver: Callable[[], DriverState] = driver_state) -> None:
        self._driver = driver
        self.mapped_by: str | None = None
        self.state = driver()
        if self.state.driver is not Driver.NOT_MAPPED:
            self.mapped_by = "the interpreter's start"
        say(f"launcher start: {self.state.describe()}")

    def __call__(self, step: str) -> None:
        self.state = self._driver()
        newly = self.mapped_by is None and self.state.driver is not Driver.NOT_MAPPED
        if newly:
            self.mapped_by = step
        extra = thread_names()
        say(
            f"launcher import {step}: {self.state.describe()}"
            + (f" (mapped by import {step})" if newly else "")
            + (f"; other threads: {', '.join(extra)}" if extra else "")
        )


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def secs_text(spent: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}s" for k, v in spent.items())


def build_wait_secs(pending: bool, quiet_secs: float) -> float | None:
    """How long the idle zygote waits before it builds a queued model, ``quiet_secs`` after the last fork
    request: None when nothing is queued, 0.0 when it builds now (quiet for :data:`PREBUILD_QUIET_SECS`)."""
    if not pending:
        return None
    return max(0.0, PREBUILD_QUIET_SECS - quiet_secs)


def _reap(ctl_out: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            _send(ctl_out, {"exit": pid, "code": None, "signal": os.WTERMSIG(status)})
        else:
            _send(ctl_out, {"exit": pid, "code": os.waitstatus_to_exitcode(status), "signal": None})


def move_log(path: str, early_log: str | None) -> None:
    """From now on this process's stdout and stderr (and its future children's) append to ``path``; what was
    written to ``early_log`` (its stderr so far, when given) is copied there first and the file removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        sys.stderr.flush()
        if early_log is not None:
            with contextlib.suppress(OSError), open(early_log, "rb") as old:
                while chunk := old.read(1 << 16):
                    os.write(fd, chunk)
            with contextlib.suppress(OSError):
                os.unlink(early_log)
        os.dup2(fd, 2)
        os.dup2(fd, 1)
    finally:
        os.close(fd)


def control_fds() -> tuple[int, int]:
    """Move the control pipe off fds 0/1 (nothing printed by a library can corrupt it, and children get their
    own stdio): returns ``(ctl_in, ctl_out)``; fd 0 is then ``/dev/null`` and fd 1 the log (fd 2)."""
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return ctl_in, ctl_out


def import_all(*, preload: bool, models_of: str | None) -> tuple[dict[str, float], DriverWatch]:
    """The launcher's imports (nothing heavy without ``preload``; the model classes of the config at
    ``models_of`` too), the driver watched after each step; then the heap frozen. Returns seconds per step
    and the watch."""
    spent: dict[str, float] = {}
    watch = DriverWatch()
    if preload:
        from colo.modelserver.serve import import_modules

        spent = import_modules(after_step=watch)
        if models_of is not None:
            spent["models"] = import_models_of(models_of)
            watch("models")
        # What the imports made moves to the collector's permanent generation: a forked agent's collections
        # then never walk (or write to) those ~1M objects, so their pages stay shared with the launcher.
        gc.freeze()
    return spent, watch


def serve(*, preload: bool = True, models_of: str | None = None, early_log: str | None = None) -> int:
    """The zygote's loop: import (and the model classes of the config at ``models_of``), say ready, then fork
    children on request and report their exits until the runner closes the control pipe (then exit; the
    children keep running). ``early_log``: the temporary file stderr goes to until a ``{"log_to": PATH}``
    message (:func:`move_log`)."""
    ctl_in, ctl_out = control_fds()
    spent, watch = import_all(preload=preload, models_of=models_of)
    return zygote_loop(ctl_in, ctl_out, spent=spent, watch=watch, preload=preload, early_log=early_log)


def zygote_loop(
    ctl_in: int,
    ctl_out: int,
    *,
    spent: dict[str, float],
    watch: DriverWatch,
    preload: bool,
    early_log: str | None = None,
    ready_extra: dict[str, Any] | None = None,
) -> int:
    """Say ready (with ``ready_extra``: a node launcher's session says what launcher it is), then fork children
    on request and report their exits until ``ctl_in`` reaches its end; 0."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    inherited = (ctl_in, ctl_out, wake_r, wake_w)
    blocker = fork_blocker()
    ready_line = (
        f"launcher ready: imports {secs_text(spent)}; {blocker or 'single-threaded, CUDA driver not initialised'}"
    )
    if ready_extra and "node" in ready_extra:
        ready_line = (
            f"a session (pid {os.getpid()}) of the node launcher (pid {ready_extra['node'].get('pid')}): {ready_line}"
        )
    say(ready_line)
    _send(
        ctl_out,
        {
            "ready": True,
            "pid": os.getpid(),
            "import_secs": spent,
            "blocker": blocker,
            "driver": watch.state.describe(),
            "libcuda_mapped_by": watch.mapped_by,
            **(ready_extra or {}),
        },
    )
    pending = b""
    preloader = Preloader()
    asked_at = time.monotonic()  # the last fork request (or the start)
    try:
        while True:
            # Idle with models to build: build one once no fork was asked for a while (a burst of forks is
            # never held by a build; a request that comes during one waits at most that one build).
            build_in = build_wait_secs(preloader.has_work(), time.monotonic() - asked_at)
            ready, _, _ = select.select([ctl_in, wake_r], [], [], 1.0 if build_in is None else build_in)
            if not ready and build_wait_secs(preloader.has_work(), time.monotonic() - asked_at) == 0.0:
                preloader.build_one()
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            _reap(ctl_out)
            if ctl_in not in ready:
                continue
            data = os.read(ctl_in, 1 << 16)
            if not data:
                return 0  # the runner is gone
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                rid = None
                try:
                    req = json.loads(line)
                    if "log_to" in req:  # where to log from now on (no reply)
                        move_log(str(req["log_to"]), early_log)
                        if early_log is None:  # nothing was copied: say here what this launcher is
                            say(ready_line)
                        early_log = None
                        continue
                    rid = req["id"]
                    asked_at = time.monotonic()
                    if preload:
                        preloader.before_fork(req["argv"])
                    _send(ctl_out, {"id": rid, "pid": _fork(req, inherited, preloader.child_setup)})
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    _send(ctl_out, {"id": rid, "error": str(exc)})
    except (BrokenPipeError, ConnectionResetError):
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="colo's pre-imported launcher.")
    parser.add_argument("--no-preload", action="store_true", help="Import nothing heavy (tests).")
    parser.add_argument(
        "--models-of", metavar="CONFIG", default=None, help="Also import the model classes of this colo.yaml first."
    )
    parser.add_argument(
        EARLY_LOG_OPTION, metavar="FILE", default=None, help="stderr's file until the runner names the log file."
    )
    args = parser.parse_args(argv)
    return serve(preload=not args.no_preload, models_of=args.models_of, early_log=args.early_log)


if __name__ == "__main__":
    sys.exit(main())
