"""``python -m colo.modelserver.serve``: run colo's built-in model agent for one agent of a colo.yaml.

::

    python -m colo.modelserver.serve --agent critic --config colo.yaml --port 9104 [--worst-case]
        [--batch-wait-ms 2] [--max-queue 64] [--cuda-graphs on|off] [--prepare-threads N]

The HTTP server starts at once (``/health`` answers 503 ``loading``); the models load on the agent's device
thread, then one warm-up forward runs on the device (``--worst-case``: the worst batch × sequence, so the
process's memory peak is the one the plan sized its MPS limit for); then ``/health`` answers 200. On CUDA,
encoder batches of rows of one length are then replayed from CUDA graphs within a small memory budget
(``--cuda-graphs off``, or ``COLO_CUDA_GRAPHS=off`` in the environment, runs every batch eagerly;
:mod:`colo.modelserver.graphs`).

Start-up order, for speed and for a pre-forking launcher: :func:`import_modules` does every heavy import
(torch, transformers, the agent's model classes, the HTTP stack) and never touches CUDA, so a launcher may call
it once, fork, and call :func:`main` in each child: the imports are then already done, and CUDA is first
initialised in the child (``resolve_device``), after its MPS environment is set.

HTTP is uvicorn's, on its fastest parts when installed (:func:`http_stack`: httptools' parser and the uvloop
event loop, else h11 and asyncio's loop; the log says which), with no access log and no proxy-header pass.

Exit codes (:mod:`colo.modelserver.exit_codes`): 0 after SIGTERM/SIGINT (graceful: uvicorn finishes
in-flight requests), 2 for a bad command line or colo.yaml, 3 when loading or warming up ran the device out of
memory (a line with "CUDA out of memory" is logged first), 4 (``EXIT_CONTEXT_LOST``) when the CUDA context
became unusable while serving (one line says why first), 1 for any other failure (port in use, a model that
cannot be built).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from colo.errors import ColoError, UsageError
from colo.gpu.mps import env as mps_env
from colo.modelserver.command import CUDA_GRAPHS_VAR, CUDA_WAIT_VAR, DEFAULT_HOST, MEMORY_CAP_VAR, memory_cap_of
from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST, EXIT_FAILED, EXIT_OK, EXIT_OOM
from colo.modelserver.inference import CudaWait
from colo.modelserver.startup import StartPhases

if TYPE_CHECKING:
    from colo.spec.config import ModelSpec

log = logging.getLogger("colo.modelserver")

__all__ = [
    "EXIT_CONTEXT_LOST",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_OOM",
    "UNUSED_OPTIONAL_PACKAGES",
    "cap_allocator",
    "collector_paused",
    "import_modules",
    "main",
    "parse_args",
    "unused_packages_hidden",
]

# After the context is lost: time for in-flight 503 answers to go out before the process exits.
CONTEXT_LOST_EXIT_GRACE_SECS = 0.3


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint="see python -m colo.modelserver.serve --help")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The agent's command line. Raises UsageError (exit 2) instead of argparse's own exit."""
    parser = _Parser(
        prog="python -m colo.modelserver.serve",
        description="Serve one colo agent's models: GET /health, POST /infer.",
        exit_on_error=False,
    )
    parser.add_argument("--agent", required=True, help="Agent name in the config.")
    parser.add_argument("--config", required=True, help="Path of colo.yaml.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="Address to listen on (default 127.0.0.1).")
    parser.add_argument(
        "--port", type=int, default=None, help="Port (default: the agent's port in the config)."
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N.")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="Override every model's dtype.",
    )
    parser.add_argument(
        "--worst-case",
        action="store_true",
        help="Warm up with the worst-case batch × max_seq_len (and all new tokens).",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="Longest a batch waits to merge concurrent requests (default: the agent's batch_wait_ms, 2).",
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="Requests allowed to wait for the device; beyond, 503."
    )
    parser.add_argument(
        "--cuda-graphs",
        default=os.environ.get(CUDA_GRAPHS_VAR, "on"),
        help=f"on (default; {CUDA_GRAPHS_VAR} sets the default) or off: replay encoder batches of rows of one "
        "length from CUDA graphs (CUDA only).",
    )
    parser.add_argument(
        "--cuda-wait",
        default=os.environ.get(CUDA_WAIT_VAR, CudaWait.AUTO.value),
        help=f"auto (default; {CUDA_WAIT_VAR} sets the default), spin or block: how the device thread waits for "
        "a batch on CUDA — spinning (fastest wake-up, a core held), sleeping (the core left to the HTTP side), "
        "or spinning only for a lone request.",
    )
    parser.add_argument(
        "--prepare-threads",
        type=int,
        default=None,
        help="Threads that tokenise large requests off the event loop (default: half the usable cores, 2 to 4).",
    )
    # Tests only: POST /debug/fault breaks the CUDA context. Hidden, and never passed by colo.
    parser.add_argument("--enable-fault-route", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise UsageError(str(exc), hint="see python -m colo.modelserver.serve --help") from exc
    if extra:
        raise UsageError(
            f"unknown arguments: {' '.join(extra)}", hint="see python -m colo.modelserver.serve --help"
        )
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range 1..65535")
    if args.batch_wait_ms is not None and not 0 <= args.batch_wait_ms <= 1000:
        raise UsageError(f"--batch-wait-ms {args.batch_wait_ms} is outside 0..1000")
    if not 1 <= args.max_queue <= 100_000:
        raise UsageError(f"--max-queue {args.max_queue} is outside 1..100000")
    args.cuda_graphs = str(args.cuda_graphs).strip().lower()
    if args.cuda_graphs not in ("on", "off"):
        raise UsageError(
            f"--cuda-graphs {args.cuda_graphs!r}: write on or off",
            hint=f"the default comes from {CUDA_GRAPHS_VAR} when it is set",
        )
    try:
        args.cuda_wait = CudaWait(str(args.cuda_wait).strip().lower())
    except ValueError:
        raise UsageError(
            f"--cuda-wait {args.cuda_wait!r}: write auto, spin or block",
            hint=f"the default comes from {CUDA_WAIT_VAR} when it is set",
        ) from None
    if args.prepare_threads is not None and not 1 <= args.prepare_threads <= 256:
        raise UsageError(f"--prepare-threads {args.prepare_threads} is outside 1..256")
    return args


#: Optional packages transformers imports at start when they are installed, which the agent never uses:
#: scikit-learn (only assisted generation's candidate heuristics, ``roc_curve``) cost 2.4 s of the 7.8 s that
#: ``import transformers`` + its model classes took on the lent H100 host, and SciPy (only the object-detection
#: losses, ``linear_sum_assignment``) 0.55 s of what was left (``python -X importtime``, 2026-12-06).
UNUSED_OPTIONAL_PACKAGES = ("sklearn", "scipy")


@contextlib.contextmanager
def unused_packages_hidden() -> Iterator[list[str]]:
    """Within: :data:`UNUSED_OPTIONAL_PACKAGES` are marked absent (``sys.modules[name] = None``: transformers'
    ``find_spec`` check then says "not installed", and remembers it), unless something in this process imported
    one already; yields the names marked. After: the marks are gone again, so a model's own code that imports
    one of them explicitly still can."""
    hidden = [name for name in UNUSED_OPTIONAL_PACKAGES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's own "absent" marker
    try:
        yield hidden
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Within: Python's cyclic garbage collector off (as it was after). The heavy imports allocate about a
    million objects and free almost none, so every collection their allocations trigger walks a growing heap
    for nothing: 0.3-0.8 s of the 4-5.5 s that ``import_modules`` took on a 2-core CPU machine (4 runs each,
    2026-12-06)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def import_modules(
    specs: Sequence[tuple[str, ModelSpec]] = (), *, after_step: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Do every heavy import the agent needs — torch, transformers, the HTTP stack, and the model classes of
    ``specs`` — without initialising CUDA. Returns seconds per step (``torch``, ``transformers``, ``http``,
    ``models``); ``after_step(name)`` is called after each (the launcher looks at the CUDA driver there).
    Safe to call in a parent that forks agents afterwards; a model whose class cannot be found here is left
    for the load to report. The garbage collector is paused meanwhile (:func:`collector_paused`).
    """
    with unused_packages_hidden(), collector_paused():
        return _import_all(specs, after_step)


def _import_all(specs: Sequence[tuple[str, ModelSpec]], after_step: Callable[[str], None] | None) -> dict[str, float]:
    spent: dict[str, float] = {}

    def done(step: str, started: float) -> float:
        spent[step] = time.perf_counter() - started
        if after_step is not None:
            after_step(step)
        return time.perf_counter()

    started = time.perf_counter()
    import torch  # noqa: F401

    started = done("torch", started)
    import transformers  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401  (lazy in transformers: seconds at the first load)

    started = done("transformers", started)
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401

    for optional in http_stack():
        if optional in ("httptools", "uvloop"):
            importlib.import_module(optional)

    import colo.modelserver.app
    import colo.modelserver.runtime  # noqa: F401

    started = done("http", started)
    from colo.memory.build import preload

    for model_id, spec in specs:
        try:
            preload(model_id, path=spec.path)
        except Exception as exc:  # the load reports it properly, with its exit code
            log.debug("preload of %s skipped: %s", model_id, exc)
    done("models", started)
    return spent


def http_stack() -> tuple[str, str]:
    """uvicorn's HTTP parser and event loop for the agent: ``("httptools", "uvloop")`` when installed (a lone
    request's parsing and loop wake-ups cost a fraction of h11's and asyncio's), else ``"h11"``/``"asyncio"``."""
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    loop = "uvloop" if sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None else "asyncio"
    return http, loop


class EarlyContext:
    """The CUDA context of ``device``, created on a side thread from the agent's first steps (:meth:`start`) so
    that it is made while the agent imports its model classes and builds its HTTP app, not after; the loader
    then waits for it (:meth:`wait`). Creating it is one tiny allocation, synchronised. Nothing on CPU.

    On the H100 host the context of each of the sized newsroom's nine agents, started at once under MPS, took
    0.6 s — as long as their imports and set-up together."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EarlyContext:
        if self.device.startswith("cuda"):
            self._thread = threading.Thread(target=self._create, name="colo-agent-cuda-context", daemon=True)
            self._thread.start()
        return self

    def _create(self) -> None:
        try:
            import torch

            torch.zeros(1, device=self.device)
            torch.cuda.synchronize(self.device)
        except BaseException as exc:  # raised again by wait(), where the loader reports it
            self._error = exc

    def wait(self) -> None:
        """Until the context exists; raises what creating it raised."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error


def _setup_logging(agent: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s colo-agent[{agent}] pid=%(process)d %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _device_line(device: str) -> str:
    import torch

    parts = [f"device {device}"]
    if device.startswith("cuda"):
        parts.append(f"({torch.cuda.get_device_name(device)})")
    parts.append(f"torch {torch.__version__}")
    for var in (
        mps_env.VISIBLE_DEVICES,
        mps_env.PIPE_DIRECTORY,
        mps_env.PINNED_DEVICE_MEM_LIMIT,
        mps_env.ACTIVE_THREAD_PERCENTAGE,
        MEMORY_CAP_VAR,
    ):
        if os.environ.get(var):
            parts.append(f"{var}={os.environ[var]}")
    return " ".join(parts)


def cap_allocator(device: str, environ: Mapping[str, str] | None = None) -> int | None:
    """On a GPU without MPS (``COLO_MEMORY_CAP_BYTES`` set by the supervisor), cap PyTorch's caching
    allocator at the agent's planned limit: ``torch.cuda.set_per_process_memory_fraction(limit / total)``.
    An allocation past it fails as out of memory (507, the agent stays up), as it would under MPS's pinned
    limit. It counts what PyTorch allocates (weights, activations, cuBLAS workspaces), not the CUDA context
    (a few hundred MiB), so the process may pass its limit by that much. Returns the cap in bytes, or None
    when nothing was capped (no variable, not CUDA, or torch refused)."""
    env = os.environ if environ is None else environ
    try:
        cap = memory_cap_of(env)
    except ValueError:
        log.warning("ignoring %s=%r: not a number of bytes", MEMORY_CAP_VAR, env.get(MEMORY_CAP_VAR))
        return None
    if cap is None or not device.startswith("cuda"):
        return None
    import torch

    try:
        # set_per_process_memory_fraction wants an index: a bare "cuda" is refused ("Expected a torch.device
        # with a specified index"), as seen on the H100.
        index = torch.device(device).index
        if index is None:
            index = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        fraction = min(1.0, max(cap, 1) / total)
        torch.cuda.set_per_process_memory_fraction(fraction, index)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:  # serve uncapped rather than not at all
        log.warning("no MPS: could not cap PyTorch's allocator at %d MiB (%s); running uncapped", cap >> 20, exc)
        return None
    log.info("no MPS: PyTorch's allocator capped at %d MiB (%.4f of %d MiB)", cap >> 20, fraction, total >> 20)
    return cap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT or a load failure; return the process exit code."""
    phases = StartPhases(os.environ)  # the fork/spawn phase ends here
    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        # Before uvicorn runs, and when it re-raises the signal after its graceful shutdown: only record it.
        stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        args = parse_args(argv)
    except ColoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    _setup_logging(args.agent, args.log_level)
    try:
        from colo.modelserver.loading import agent_models, resolve_device
        from colo.spec import load_config

        config = load_config(args.config)
        specs = agent_models(config, args.agent, source=args.config)
        port = args.port if args.port is not None else config.agents[args.agent].port
        if port is None:
            raise UsageError(
                f"agent {args.agent} has no port in {args.config}",
                hint="give --port, or set agents.<name>.port in colo.yaml",
            )
        with unused_packages_hidden():
            device = resolve_device(args.device)  # imports torch (done already when forked)
        context = EarlyContext(device).start()  # made while the rest is imported and the app is built
        spent = import_modules(specs)  # instant when a launcher imported them before forking
        log.info("imports: %s", " ".join(f"{k} {v:.2f}s" for k, v in spent.items()))
        phases.mark("imports")
    except ColoError as err:
        log.error("%s", err)
        return err.exit_code
    if stop_requested.is_set():
        log.info("stop requested before start; exiting")
        return EXIT_OK
    log.info("agent %s: %s", args.agent, _device_line(device))
    cap_bytes = cap_allocator(device)
    agent = config.agents[args.agent]
    wait_ms = args.batch_wait_ms if args.batch_wait_ms is not None else agent.batch_wait_ms
    return _serve(args, specs, context, port, stop_requested, wait_ms, agent.matmul_precision, phases, cap_bytes)


def _serve(
    args: argparse.Namespace,
    specs: list[tuple[str, ModelSpec]],
    context: EarlyContext,
    port: int,
    stop_requested: threading.Event,
    batch_wait_ms: float,
    matmul_precision: str,
    phases: StartPhases,
    memory_cap_bytes: int | None = None,
) -> int:
    import uvicorn

    from colo.modelserver.app import create_app
    from colo.modelserver.runtime import AgentRuntime

    device = context.device
    runtime = AgentRuntime(
        agent=args.agent,
        specs=specs,
        device=device,
        dtype=args.dtype,
        worst_case=args.worst_case,
        batch_wait_ms=batch_wait_ms,
        matmul_precision=matmul_precision,
        max_queue=args.max_queue,
        prepare_threads=args.prepare_threads,
        on_context_lost=lambda reason: _exit_soon(args.agent, EXIT_CONTEXT_LOST),
        start=phases,
        cuda_graphs=args.cuda_graphs == "on",
        cuda_wait=args.cuda_wait,
        memory_cap_bytes=memory_cap_bytes,
    )
    if args.enable_fault_route:
        log.warning("agent %s: the fault route POST /debug/fault is enabled (tests only)", args.agent)
    http, loop = http_stack()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime, fault_route=args.enable_fault_route),
            host=args.host,
            port=port,
            http=http,
            loop=loop,
            log_config=None,
            access_log=False,
            proxy_headers=False,  # nothing here reads the client's address
            lifespan="off",
            timeout_graceful_shutdown=30,
        )
    )
    exit_code = [EXIT_OK]

    def _load() -> None:
        try:
            context.wait()
            phases.mark("cuda_context")  # what was left of it: it was started before the imports
            loading = time.monotonic()
            runtime.load()
            # runtime.load builds every model, then warms up: the models' own load times are the weights.
            weights_secs = sum(m.load_secs for m in runtime.models.values())
            phases.mark("weights", weights_secs)
            phases.mark("warmup", time.monotonic() - loading - weights_secs)
            runtime.watch_context()  # a lost context is found within about a second, polled or not
            return
        except ColoError as err:  # LoadOutOfMemory (exit 3), unknown model (exit 2), ...
            exit_code[0] = err.exit_code
        except Exception:
            log.exception("agent %s failed to load", args.agent)
            exit_code[0] = EXIT_FAILED
        server.should_exit = True

    loader = threading.Thread(target=_load, name="colo-agent-load", daemon=True)
    phases.mark("setup")
    loader.start()
    log.info(
        "agent %s: serving on http://%s:%d (loading %d model(s)); HTTP: uvicorn with %s on %s",
        args.agent, args.host, port, len(specs), http, loop,
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind the port
        log.error("agent %s: the HTTP server could not start on %s:%d", args.agent, args.host, port)
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
        return _finish(loader, code or EXIT_FAILED)
    finally:
        runtime.close()  # after uvicorn's graceful stop: nothing is queued; the prepare pool's threads end
    if exit_code[0] != EXIT_OK:
        log.error("agent %s: exiting with code %d (%s)", args.agent, exit_code[0], runtime.error)
    elif stop_requested.is_set():
        log.info("agent %s: stopped", args.agent)
    return _finish(loader, exit_code[0])


def _exit_soon(agent: str, code: int) -> None:
    """Leave the process with ``code`` shortly (in-flight answers go out first), from a side thread.

    os._exit, not a graceful stop: with the context lost, torch's and uvicorn's shutdown may wait on the
    device. The reason was logged once by the runtime.
    """

    def leave() -> None:
        time.sleep(CONTEXT_LOST_EXIT_GRACE_SECS)
        log.error("agent %s: exiting with code %d (CUDA context lost)", agent, code)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=leave, name="colo-agent-exit", daemon=True).start()


def _finish(loader: threading.Thread, code: int) -> int:
    if loader.is_alive():
        # Stopped mid-load: torch is busy in the loader thread; leave at once rather than wait for it.
        log.info("stopping while models are still loading")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
