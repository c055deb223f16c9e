"""A pre-imported launcher (a "zygote") for the built-in agent, and :class:`ForkRunner`, the Runner that uses it.

Plain spawning pays ``import torch``, ``import transformers`` and the HTTP stack in every agent (seconds each
time an agent restarts). The zygote is one long-lived process, ``python -m colo.supervise.forkserver``, that
does those imports once (:func:`colo.modelserver.serve.import_modules`), **never initialises CUDA**, and forks
one child per built-in agent on request. The child becomes a session leader, sets its environment (the MPS
client settings, ``CUDA_VISIBLE_DEVICES``, the agent's ``env``), points stdout/stderr at the agent's log and runs
the agent's ``main``: CUDA is first initialised there, after the environment is set.

Design: the zygote is the children's parent, so it reaps them and sends ``(pid, exit status)`` over its control
pipe; the exit code matters (``EXIT_CONTEXT_LOST`` restarts an agent at once, 3 means out of memory), which a
double fork would lose. Children are their own session leaders, so the supervisor signals their process group
exactly as it does a spawned agent's. If the orchestrator goes away the zygote sees EOF and exits; the agents
keep running (re-parented to init) and an orchestrator started again re-adopts them by pid and start time, as
for spawned agents. If the zygote dies, its children are tracked by pid and start time (exit status unknown,
like an adopted process), new agents are spawned plainly, and a new zygote is started in the background.

Forking only from a single-threaded process is safe: the zygote checks, before every fork, that it has one OS
thread (``/proc/self/task``), one Python thread, and no CUDA context; it runs with ``OPENBLAS_NUM_THREADS=1``
(numpy's OpenBLAS otherwise starts a worker thread at import). An agent whose ``env`` changes a variable read
at process start (``PYTHON*``, ``LD_*``, thread-pool sizes such as ``OMP_NUM_THREADS``) is spawned plainly,
as is every ``command:`` agent.

Control protocol (JSON lines; the zygote reads its stdin and writes its stdout, both pipes to the runner):
``{"id", "argv", "env", "cwd", "log"}`` asks for a child; the zygote answers ``{"id", "pid"}`` or
``{"id", "error"}``, says ``{"ready": true, "import_secs": {...}}`` once after its imports, and
``{"exit": pid, "code": c, "signal": s}`` whenever it reaps a child.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from colo.errors import SupervisorError
from colo.gpu import procs
from colo.modelserver.command import MODULE as BUILTIN_AGENT_MODULE
from colo.supervise.runner import ExitStatus, LaunchSpec, ProcessHandle, ProcessRunner, Runner, base_env

log = logging.getLogger("colo.supervise.forkserver")

MODULE = "colo.supervise.forkserver"
Launcher = Literal["fork", "spawn"]

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
#: How long the first spawn waits for a starting zygote's imports before spawning plainly.
READY_WAIT_SECS = 60.0
#: How long a fork request may take before the zygote counts as hung (and plain spawning takes over). The
#: first request for a config also imports its model classes in the zygote (seconds).
FORK_REPLY_SECS = 60.0
#: Zygotes started after the first one died, at most: past this, every agent is spawned plainly.
MAX_RESTARTS = 3


# --- the zygote (its own process) ----------------------------------------------------------------------


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


# --- the runner side (in the orchestrator) --------------------------------------------------------------


class _ZygoteGone(Exception):
    """The zygote has exited or stopped answering."""


class _Refused(Exception):
    """The zygote answered but would not fork this request (its reason is the message)."""


@dataclass
class _Zygote:
    """One running zygote process as seen from the orchestrator (a reader thread collects its messages)."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    first: bool  # the first zygote of its runner: spawns wait for its imports
    ready: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    import_secs: dict[str, float] = field(default_factory=dict)
    blocker: str | None = None  # why the zygote may not fork, as it said when ready
    exits: dict[int, ExitStatus] = field(default_factory=dict)
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    next_id: int = 0

    def read_forever(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self.cond:
                if msg.get("ready"):
                    self.import_secs = dict(msg.get("import_secs") or {})
                    self.blocker = msg.get("blocker")
                    self.ready.set()
                elif "exit" in msg:
                    sig = msg.get("signal")
                    self.exits[int(msg["exit"])] = ExitStatus(code=msg.get("code"), signal=sig)
                elif msg.get("id") is not None:
                    self.replies[int(msg["id"])] = msg
                self.cond.notify_all()
        # EOF: every message the zygote sent has been read; only now may its children be tracked by pid.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)  # reaped: no zombie zygote
        for pipe in (self.proc.stdout, self.proc.stdin):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()
        with self.cond:
            self.gone.set()
            self.ready.set()
            self.cond.notify_all()

    def fork(self, argv: Sequence[str], env: dict[str, str], cwd: str | None, log_path: Path) -> int:
        """Ask for a child; its pid. Raises _ZygoteGone when the zygote is gone or hung, _Refused when it
        answers with an error."""
        with self.cond:
            if self.gone.is_set():
                raise _ZygoteGone("the launcher has exited")
            self.next_id += 1
            rid = self.next_id
            line = json.dumps({"id": rid, "argv": list(argv), "env": env, "cwd": cwd, "log": str(log_path)})
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise _ZygoteGone(f"the launcher's pipe is closed: {exc}") from exc
            ok = self.cond.wait_for(lambda: rid in self.replies or self.gone.is_set(), FORK_REPLY_SECS)
            reply = self.replies.pop(rid, None)
        if reply is None:
            raise _ZygoteGone("the launcher did not answer" if not ok else "the launcher has exited")
        if "error" in reply:
            raise _Refused(str(reply["error"]))
        pid = int(reply["pid"])
        with self.cond:
            self.exits.pop(pid, None)  # a stale exit of an earlier child with this (reused) pid
        return pid

    def close(self, wait_secs: float = 5.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=wait_secs)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def is_builtin_agent(spec: LaunchSpec, python: str = sys.executable) -> bool:
    """Whether ``spec`` runs colo's built-in agent with this interpreter (the only thing the zygote forks)."""
    return len(spec.argv) >= 3 and spec.argv[0] == python and tuple(spec.argv[1:3]) == ("-m", BUILTIN_AGENT_MODULE)


class ForkRunner:
    """A :class:`~colo.supervise.runner.Runner` that forks built-in agents from a pre-imported zygote and
    spawns everything else (and everything while no zygote is usable) with ``fallback``.

    ``forkable`` picks the specs to fork (default: :func:`is_builtin_agent`); ``preload=False`` starts a zygote
    that imports nothing heavy (tests). The zygote starts on the first forkable spawn, which waits for its
    imports (up to ``ready_wait_secs``); a zygote that dies is replaced in the background while spawns go to
    ``fallback``, at most ``max_restarts`` times.
    """

    def __init__(
        self,
        *,
        fallback: Runner | None = None,
        forkable: Callable[[LaunchSpec], bool] | None = None,
        preload: bool = True,
        ready_wait_secs: float = READY_WAIT_SECS,
        max_restarts: int = MAX_RESTARTS,
        python: str = sys.executable,
    ) -> None:
        self.fallback: Runner = fallback or ProcessRunner()
        self._forkable = forkable or (lambda spec: is_builtin_agent(spec, python))
        self._preload = preload
        self._ready_wait_secs = ready_wait_secs
        self._restarts_left = max_restarts
        self._python = python
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._log_dir: Path | None = None
        self._forked: dict[int, _Zygote] = {}  # pid -> the zygote that forked it
        self.forks = 0
        self.fallbacks: list[str] = []  # why each forkable spec was spawned plainly

    # --- Runner ---------------------------------------------------------------------------------------
    def spawn(self, spec: LaunchSpec, log_path: Path) -> ProcessHandle:
        if not self._forkable(spec):
            return self.fallback.spawn(spec, log_path)
        env = base_env()
        for key, value in ZYGOTE_ENV_DEFAULTS.items():
            env.setdefault(key, value)  # as in the zygote's own environment
        env.update(spec.env_dict())
        zygote, reason = self._usable_zygote(log_path.parent)
        if zygote is not None:
            reason = self._unforkable_env(zygote, env) or ""
            if not reason:
                try:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    pid = zygote.fork(spec.argv, env, spec.cwd, log_path.absolute())
                except _Refused as exc:
                    reason = str(exc)
                except _ZygoteGone as exc:
                    reason = str(exc)
                    if not zygote.gone.is_set():  # hung: replace it
                        self._retire(zygote)
                else:
                    with self._lock:
                        self._forked[pid] = zygote
                        self.forks += 1
                    start = procs.create_time(pid)
                    return ProcessHandle(pid, start if start is not None else 0.0)
        self.fallbacks.append(reason)
        log.info("spawning %s plainly: %s", spec.argv[0], reason)
        return self.fallback.spawn(spec, log_path)

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        with self._lock:
            zygote = self._forked.get(handle.pid)
        if zygote is None:
            return self.fallback.poll(handle)
        with zygote.cond:
            status = zygote.exits.pop(handle.pid, None)
        if status is None and not zygote.gone.is_set():
            return None
        if status is None and procs.is_alive(handle.pid, handle.start_time or None):
            return None  # orphaned by a dead zygote: alive by pid and start time
        with self._lock:
            self._forked.pop(handle.pid, None)
        return status or ExitStatus()

    def signal(self, handle: ProcessHandle, sig: int) -> None:
        with self._lock:
            zygote = self._forked.get(handle.pid)
        if zygote is not None:
            with zygote.cond:
                if handle.pid in zygote.exits:
                    return  # ended (not yet polled): its pid may not be signalled
            if not zygote.gone.is_set():
                # A child of the live zygote, session leader of its own group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(handle.pid, sig)
                return
        self.fallback.signal(handle, sig)

    def adopt(self, pid: int, start_time: float) -> ProcessHandle | None:
        return self.fallback.adopt(pid, start_time)

    # --- the zygote -------------------------------------------------------------------------------------
    def start(self, log_dir: Path) -> None:
        """Start the zygote now (its imports run in the background), logging to ``log_dir/forkserver.log``."""
        with self._lock:
            if self._zygote is None or self._zygote.gone.is_set():
                self._zygote = self._start_zygote(log_dir)

    def wait_ready(self, timeout_secs: float) -> bool:
        """Wait until the zygote (started by :meth:`start` or a spawn) has done its imports; False if it
        is not ready (or gone) by then."""
        deadline = time.monotonic() + timeout_secs
        while time.monotonic() < deadline:
            z = self._zygote
            if z is not None and z.ready.wait(0.05):
                return not z.gone.is_set()
            if z is None:
                time.sleep(0.05)
        return False

    def import_secs(self) -> dict[str, float]:
        """Seconds the current zygote spent importing, per step (empty before it is ready)."""
        z = self._zygote
        return dict(z.import_secs) if z is not None else {}

    def close(self) -> None:
        """Stop the zygote (its children keep running)."""
        with self._lock:
            z, self._zygote = self._zygote, None
        if z is not None:
            z.close()

    def _usable_zygote(self, log_dir: Path) -> tuple[_Zygote | None, str]:
        """The zygote to fork from, or None and why not."""
        with self._lock:
            z = self._zygote
            first = self._log_dir is None
            if z is None or z.gone.is_set():
                if not first and self._restarts_left <= 0:
                    return None, "the launcher died too often"
                if not first:
                    self._restarts_left -= 1
                z = self._zygote = self._start_zygote(log_dir)
                if z is None:
                    return None, "the launcher cannot start"
        # Only the very first zygote is waited for: after a death, agents are spawned plainly until the
        # replacement is ready, so recovery never waits for imports twice.
        if z.first:
            z.ready.wait(self._ready_wait_secs)
        if z.gone.is_set():
            return None, "the launcher exited (see forkserver.log)"
        if not z.ready.is_set():
            return None, "the launcher is still importing"
        if z.blocker:
            return None, z.blocker
        return z, ""

    def _start_zygote(self, log_dir: Path) -> _Zygote | None:
        first = self._log_dir is None
        self._log_dir = log_dir
        env = base_env()
        for key, value in ZYGOTE_ENV_DEFAULTS.items():
            env.setdefault(key, value)
        argv = [self._python, "-m", MODULE] + ([] if self._preload else ["--no-preload"])
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / "forkserver.log", "ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=out,
                    env=env,
                    start_new_session=True,  # a Ctrl-C to `colo up` is colo's to handle, not the launcher's
                    close_fds=True,
                )
        except OSError as exc:
            log.warning("cannot start the launcher (%s); agents are spawned plainly", exc)
            return None
        z = _Zygote(proc, env, first)
        threading.Thread(target=z.read_forever, name="colo-forkserver-reader", daemon=True).start()
        return z

    def _retire(self, zygote: _Zygote) -> None:
        with self._lock:
            if self._zygote is zygote:
                self._zygote = None
        threading.Thread(target=zygote.close, name="colo-forkserver-close", daemon=True).start()

    @staticmethod
    def _unforkable_env(zygote: _Zygote, env: dict[str, str]) -> str | None:
        keys = {k for k in (*env, *zygote.env) if k.startswith(EXEC_TIME_PREFIXES)}
        differ = sorted(k for k in keys if env.get(k) != zygote.env.get(k))
        return f"env sets {', '.join(differ)} (read at process start)" if differ else None


def make_runner(launcher: Launcher) -> Runner:
    """The runner for ``policy.launcher``: ``fork`` (built-in agents from the zygote) or ``spawn``."""
    if launcher == "fork":
        return ForkRunner()
    if launcher == "spawn":
        return ProcessRunner()
    raise SupervisorError(f"unknown launcher {launcher!r}", hint="policy.launcher is fork or spawn")


if __name__ == "__main__":
    sys.exit(main())
