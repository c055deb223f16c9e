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

Forking only from a single-threaded process is safe: before every fork the zygote checks (:func:`fork_blocker`)
that it has one OS thread (``/proc/self/task``), one Python thread, no torch CUDA state and no ``libcuda``
mapped. It runs with :data:`ZYGOTE_ENV_DEFAULTS` (numpy's OpenBLAS otherwise starts a worker thread at import;
torch's NVML-based ``is_available()`` never initialises the driver).

Control protocol (JSON lines on the zygote's stdin and stdout, both pipes to the runner):
``{"id", "argv", "env", "cwd", "log"}`` asks for a child; the zygote answers ``{"id", "pid"}`` or
``{"id", "error"}``, says ``{"ready": true, "import_secs": {...}, "blocker": null}`` once after its imports,
and ``{"exit": pid, "code": c, "signal": s}`` whenever it reaps a child.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from colo.modelserver.command import MODULE as BUILTIN_AGENT_MODULE

MODULE = "colo.launch.forkserver"

#: Set in the zygote's environment (and so its children's) unless the orchestrator's environment sets them:
#: libraries that would otherwise start worker threads at import time.
ZYGOTE_ENV_DEFAULTS: dict[str, str] = {
    "OPENBLAS_NUM_THREADS": "1",
    # torch.cuda.is_available() asks NVML instead of initialising the CUDA driver (torch's fork-safe check).
    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
}
#: Variables read when a process starts (interpreter, dynamic loader, thread pools): a child whose value differs
#: from the zygote's cannot be forked from it and is spawned plainly.
EXEC_TIME_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH_", "PYTORCH_")
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


def cuda_driver_loaded() -> bool:
    """Whether libcuda is mapped into this process: something called the CUDA driver (which cannot be used
    across fork). torch loads it lazily, on the first CUDA call."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libcuda.so" in line for line in maps)
    except OSError:
        return False


def fork_blocker() -> str | None:
    """Why this process must not fork now (more than one thread, CUDA touched), or None when it may."""
    if threading.active_count() != 1 or _threads_now() != 1:
        return f"the launcher has {_threads_now()} threads; it forks only when single-threaded"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in the launcher"
    if cuda_driver_loaded():
        return "the CUDA driver (libcuda) is loaded in the launcher"
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


def _fork(req: dict[str, Any], inherited: Sequence[int]) -> int:
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


def _preload_models(argv: Sequence[str], done: set[str]) -> None:
    """Import the model classes of every agent in the built-in agent's ``--config`` (once per version of the
    file), so children start with them imported. Never raises: a child reports its own load errors."""
    if len(argv) < 3 or argv[1:3] != ["-m", BUILTIN_AGENT_MODULE] or "--config" not in argv[:-1]:
        return
    path = argv[argv.index("--config") + 1]
    try:
        key = f"{path}@{os.stat(path).st_mtime_ns}"
    except OSError:
        return
    if key in done:
        return
    done.add(key)
    try:
        from colo.modelserver.serve import import_modules
        from colo.spec import load_config

        config = load_config(path)
        specs = {m: config.models[m] for a in config.agents.values() for m in a.models if m in config.models}
        spent = import_modules(sorted(specs.items()))
        print(f"preloaded {len(specs)} model(s) of {path}: {spent}", file=sys.stderr, flush=True)
    except Exception as exc:  # the child loads (and reports) for itself
        print(f"preloading the models of {path} failed: {exc}", file=sys.stderr, flush=True)


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


def serve(*, preload: bool = True) -> int:
    """The zygote's loop: import, say ready, then fork children on request and report their exits until the
    runner closes the control pipe (then exit; the children keep running)."""
    # The control pipe moves off fds 0/1: nothing printed by a library can corrupt it, and children get their
    # own stdio.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    spent: dict[str, float] = {}
    if preload:
        from colo.modelserver.serve import import_modules

        spent = import_modules()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    inherited = (ctl_in, ctl_out, wake_r, wake_w)
    blocker = fork_blocker()
    print(f"launcher ready: imports {spent}; {blocker or 'single-threaded, no CUDA'}", file=sys.stderr, flush=True)
    _send(ctl_out, {"ready": True, "pid": os.getpid(), "import_secs": spent, "blocker": blocker})
    pending = b""
    preloaded: set[str] = set()
    try:
        while True:
            ready, _, _ = select.select([ctl_in, wake_r], [], [], 1.0)
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
                    rid = req["id"]
                    if preload:
                        _preload_models(req["argv"], preloaded)
                    _send(ctl_out, {"id": rid, "pid": _fork(req, inherited)})
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    _send(ctl_out, {"id": rid, "error": str(exc)})
    except BrokenPipeError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="colo's pre-imported launcher.")
    parser.add_argument("--no-preload", action="store_true", help="Import nothing heavy (tests).")
    args = parser.parse_args(argv)
    return serve(preload=not args.no_preload)


if __name__ == "__main__":
    sys.exit(main())
