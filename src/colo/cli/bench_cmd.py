"""``colo bench``, ``colo capacity``, ``colo advise``: measure co-location, count instances, decide.

``colo bench encoder|decode|cmd|http`` runs N instances (separate processes) together under time-slicing
and/or colo's own MPS daemon, prints the seed guide's table (mode | individual | aggregate | scaling
efficiency) with latency, the MPS / time-slicing ratio and the merged-batch bound, and writes
``bench.json`` / ``bench.md`` / ``bench.png`` to ``--out``.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from colo import units
from colo.cli.common import OptionGroup, console, err_console, print_json, safe, with_option_groups
from colo.errors import UsageError

if TYPE_CHECKING:
    from colo.bench.agents_run import AgentsBench
    from colo.bench.results import BenchResult, PointResult
    from colo.bench.run import BenchPlan
    from colo.bench.spec import InstanceSpec

bench_app = typer.Typer(
    help="Measure N instances together, MPS vs time-slicing, against the merged-batch bound.",
    no_args_is_help=True,
)

MODE_HELP = "timeslice, mps, or both: timeslice,mps"
CONC_HELP = "numbers of concurrent instances, e.g. 1,2,4,8 (1 is always measured)"


def _execute(plan: BenchPlan, *, out: Path, as_json: bool, gpu_kind: bool) -> None:
    """Run ``plan`` with live progress, write the reports, print the table (or the JSON)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from colo.bench.format import point_line
    from colo.bench.harness import sigterm_as_exit
    from colo.bench.modes import Mode
    from colo.bench.report import to_json, write_reports
    from colo.bench.run import gpu_backend, run_bench

    backend = gpu_backend(required=Mode.MPS in plan.modes)
    if backend is None and gpu_kind:
        err_console.print("[yellow]no NVIDIA GPU found (NVML): running on the CPU, no GPU activity samples[/]")
    view = err_console if as_json else console
    steps = plan.steps()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=view, transient=True
    ) as progress:
        task = progress.add_task(f"{safe(plan.title)}: starting", total=len(steps))

        def on_message(msg: str) -> None:
            progress.update(task, description=safe(msg))

        def on_point(point: PointResult) -> None:
            progress.advance(task)
            progress.console.print(safe(point_line(point)), highlight=False)

        with sigterm_as_exit():
            result = run_bench(plan, backend=backend, progress=on_message, on_point=on_point)
    paths = write_reports([result], out)
    if as_json:
        import sys

        sys.stdout.write(to_json([result]) + "\n")
        return
    _print_table(result)
    console.print(safe(f"reports: {paths['json']}, {paths['md']}, {paths['png']}"), highlight=False)


def _print_table(result: BenchResult) -> None:
    from rich.table import Table

    from colo.bench.report import scaling_row

    unit = f"{result.unit}/s"
    table = Table(title=safe(result.title))
    for col in (
        "mode",
        "N",
        f"individual {unit}",
        f"aggregate {unit}",
        "scaling eff.",
        "MPS/TS",
        "bound",
        "of bound",
        "p50 ms",
        "p99 ms",
        "SM busy",
    ):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, n, p in result.table_points():
        table.add_row(*scaling_row(result, mode, n, p))
    console.print(table)


# --- shared options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    """The options every ``colo bench`` subcommand shares, declared once (:data:`_SHARED`).

    A subcommand that does not offer one gets the default here (``cmd`` and ``http`` have no merged-batch
    bound, ``http`` no MPS limits and mode ``external``).
    """

    mode: str = "timeslice,mps"
    concurrency: str = "1,2,4,8"
    duration: float = 10.0
    out: Path = Path("bench-out")
    gpu: int = 0
    thread_pct: str | None = None
    mem_limit: str | None = None
    bound: bool = False
    as_json: bool = False

    def run(self, spec: InstanceSpec, title: str) -> None:
        """N copies of ``spec`` at each concurrency, in each mode: run, write the reports, print."""
        from colo.bench.options import parse_int_list, parse_limits, parse_modes
        from colo.bench.run import BenchPlan

        plan = BenchPlan(
            title,
            base=spec,
            modes=parse_modes(self.mode),
            concurrencies=parse_int_list(self.concurrency, "--concurrency"),
            merged_bound=self.bound,
            limits=parse_limits(self.thread_pct, self.mem_limit),
            gpu_index=self.gpu,
        )
        gpu_kind = spec.kind in ("encoder", "decode", "hf_decode") and spec.params.get("device", "auto") != "cpu"
        _execute(plan, out=self.out, as_json=self.as_json, gpu_kind=gpu_kind)


_SHARED: dict[str, tuple[Any, Callable[..., Any]]] = {
    "mode": (str, lambda default="timeslice,mps": typer.Option(default, "--mode", help=MODE_HELP)),
    "concurrency": (
        str,
        lambda default="1,2,4,8", help=CONC_HELP: typer.Option(default, "--concurrency", "-n", help=help),
    ),
    "duration": (float, lambda: typer.Option(10.0, "--duration", min=0.1, help="timed window per point, seconds")),
    "out": (
        Path,
        lambda: typer.Option(Path("bench-out"), "--out", help="directory for bench.json, bench.md, bench.png"),
    ),
    "gpu": (int, lambda: typer.Option(0, "--gpu", help="NVML index of the GPU")),
    "thread_pct": (
        str | None,
        lambda: typer.Option(
            None,
            "--thread-pct",
            help="MPS: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE per instance: 50, or 25,75 (i-th instance)",
        ),
    ),
    "mem_limit": (
        str | None,
        lambda: typer.Option(None, "--mem-limit", help="MPS: pinned memory limit per instance: 4GiB, or 2GiB,6GiB"),
    ),
    "bound": (
        bool,
        lambda: typer.Option(True, "--bound/--no-bound", help="also run one process with the merged batch"),
    ),
    "as_json": (
        bool,
        lambda: typer.Option(False, "--json", help="print the results as JSON (progress goes to stderr)"),
    ),
}
ALL_SHARED = tuple(_SHARED)


def bench_command(
    name: str, shared: tuple[str, ...] = ALL_SHARED, **option_args: dict[str, Any]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``colo bench NAME``: the function's own options plus the ``shared`` ones (``option_args``
    changes one's default or help, e.g. ``concurrency={"default": "1,2,3"}``). The function gets the shared
    values as its first argument, a :class:`BenchOptions`."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        hints = typing.get_type_hints(fn)
        params = own + [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                default=_SHARED[key][1](**option_args.get(key, {})),
                annotation=_SHARED[key][0],
            )
            for key in shared
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            opts = BenchOptions(**{k: kwargs.pop(k) for k in shared})
            fn(opts, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: hints.get(p.name, p.annotation) for p in params}
        bench_app.command(name)(command)
        return fn

    return register


@bench_command("encoder")
def bench_encoder(
    opts: BenchOptions,
    model: str = typer.Option(..., "--model", "-m", help="catalog model id or local path's model id"),
    path: str | None = typer.Option(None, "--path", help="local directory with the model's weights"),
    batch: int = typer.Option(8, "--batch", min=1, help="sequences per request"),
    seq: int = typer.Option(128, "--seq", min=1, help="tokens per sequence"),
    dtype: str = typer.Option("float16", "--dtype", help="float16, bfloat16 or float32"),
    graphs: bool = typer.Option(True, "--graphs/--no-graphs", help="CUDA-graph capture the forward"),
) -> None:
    """Encoder inference: forward passes of MODEL at --batch × --seq, one process per instance."""
    from colo.bench.spec import InstanceSpec

    params: dict[str, Any] = {
        "model": model,
        "batch_size": batch,
        "seq_len": seq,
        "dtype": dtype,
        "cuda_graphs": graphs,
    }
    if path:
        params["path"] = path
    opts.run(InstanceSpec("encoder", params, duration_secs=opts.duration), f"encoder {model} {dtype} {batch}×{seq}")


@bench_command("decode", concurrency={"default": "1,2,3"})
def bench_decode(
    opts: BenchOptions,
    shape: str = typer.Option("llama-3.1-8b", "--shape", help="built-in Llama shape: llama-3.1-8b, llama-3.2-1b or tiny"),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="a catalog generator via transformers StaticCache (e.g. distilgpt2) instead of the built-in shape",
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="streams per instance"),
    tokens: int = typer.Option(32, "--tokens", min=1, help="tokens per request (per stream)"),
    dtype: str | None = typer.Option(None, "--dtype", help="default bfloat16 (shape) / float16 (--model)"),
    graphs: bool = typer.Option(True, "--graphs/--no-graphs", help="CUDA-graph capture the decode step"),
) -> None:
    """Generator decode: tokens/s with a static KV cache and a CUDA-graph-captured one-token step."""
    from colo.bench.spec import InstanceSpec

    common = {"batch_size": batch, "tokens_per_request": tokens, "cuda_graphs": graphs}
    if model:
        params: dict[str, Any] = {"model": model, "dtype": dtype or "float16", **common}
        opts.run(InstanceSpec("hf_decode", params, duration_secs=opts.duration), f"decode {model}")
        return
    from colo.bench.llama_shapes import shape_named

    shape_named(shape)  # an unknown shape is a usage error here, not a failed instance later
    params = {"shape": shape, "dtype": dtype or "bfloat16", **common}
    opts.run(InstanceSpec("decode", params, duration_secs=opts.duration), f"decode {shape} shape")


@bench_command("cmd", tuple(k for k in ALL_SHARED if k != "bound"))
def bench_cmd(
    opts: BenchOptions,
    cmd: str = typer.Option(..., "--cmd", help="the command each instance runs; it must print e.g. '812 tok/s'"),
    pattern: str | None = typer.Option(None, "--pattern", help="regex with a 'value' group (and 'unit')"),
) -> None:
    """A user command: run N copies together, parse the throughput line each prints."""
    from colo.bench.spec import InstanceSpec

    params: dict[str, Any] = {"command": cmd}
    if pattern:
        params["pattern"] = pattern
    opts.run(InstanceSpec("cmd", params, duration_secs=opts.duration), f"command {cmd}")


# `colo bench http` and `colo bench servers`: N HTTP clients, each asking the same request.
HTTP_SHARED = ("concurrency", "duration", "out", "gpu", "as_json")
HTTP_CLIENTS = {"default": "1,2,3", "help": "concurrent clients, e.g. 1,2,3"}


@dataclass(frozen=True)
class HttpRequest:
    """What each HTTP client asks: the API dialect, the model, the prompt and the token budget."""

    api: str
    model: str
    prompt: str
    max_tokens: int

    def params(self) -> dict[str, Any]:
        """The load's parameters; UsageError for an API the HTTP load does not speak."""
        from colo.bench.loads.http import APIS

        if self.api not in APIS:
            raise UsageError(f"--api {self.api!r}: use one of {', '.join(APIS)}")
        return {"api": self.api, "model": self.model, "prompt": self.prompt, "max_tokens": self.max_tokens}


def _request_options(api: str, api_help: str, model_help: str) -> Any:
    return OptionGroup(
        HttpRequest,
        (
            ("api", str, typer.Option(api, "--api", help=api_help)),
            ("model", str, typer.Option("llama3.1:8b", "--model", "-m", help=model_help)),
            ("prompt", str, typer.Option("Write a short paragraph about GPUs.", "--prompt")),
            ("max_tokens", int, typer.Option(128, "--max-tokens", min=1)),
        ),
    )


@bench_command("http", HTTP_SHARED, concurrency=HTTP_CLIENTS)
@with_option_groups
def bench_http(
    opts: BenchOptions,
    url: str = typer.Option("http://127.0.0.1:11434", "--url", help="server base URL"),
    request: HttpRequest = _request_options(
        "ollama-chat", "ollama-chat, ollama-generate or openai-chat", "model name the server knows"
    ),
) -> None:
    """An HTTP target (Ollama or OpenAI-compatible): N concurrent clients; tokens from the server's counts."""
    from colo.bench.modes import Mode
    from colo.bench.spec import InstanceSpec

    spec = InstanceSpec("http", {"url": url, **request.params()}, duration_secs=opts.duration)
    replace(opts, mode=Mode.EXTERNAL).run(spec, f"http {request.api} {request.model}")


@bench_command("forwards", ("mode", "duration", "out", "gpu", "as_json"))
def bench_forwards(
    opts: BenchOptions,
    config: Path = typer.Argument(..., help="colo.yaml: one instance per agent, running its models"),
    batch: int = typer.Option(8, "--batch", min=1, help="sequences per forward, every model"),
    seq: int = typer.Option(128, "--seq", min=1, help="tokens per sequence"),
    dtype: str = typer.Option("float16", "--dtype", help="float16, bfloat16 or float32"),
) -> None:
    """All agents of CONFIG together as bare forwards: one process per agent running its models back to back
    (no HTTP, no agent; `colo bench agents` goes through the agents' APIs)."""
    from colo.bench.options import parse_modes
    from colo.bench.run import BenchPlan
    from colo.bench.suite import agent_specs

    specs = agent_specs(config, opts.duration, batch_size=batch, seq_len=seq, dtype=dtype)
    plan = BenchPlan(
        f"{config.name}: {len(specs)} agents together", fixed=specs, modes=parse_modes(opts.mode), gpu_index=opts.gpu
    )
    _execute(plan, out=opts.out, as_json=opts.as_json, gpu_kind=True)


@bench_command("agents", ("mode", "duration", "out", "gpu", "as_json"))
def bench_agents(
    opts: BenchOptions,
    config: Path | None = typer.Argument(None, help="colo.yaml whose agents colo starts (or, attached, finds)"),
    clients: str = typer.Option("1,3,16", "--clients", "-n", help="concurrent HTTP clients per agent, e.g. 1,3,16"),
    batch: int = typer.Option(8, "--batch", min=1, help="sequences per request (at most the model's batch_size)"),
    seq_len: int = typer.Option(128, "--seq-len", min=1, help="tokens per sequence (at most its max_seq_len)"),
    new_tokens: int = typer.Option(16, "--new-tokens", min=1, help="generators: tokens per request"),
    warmup: float = typer.Option(2.0, "--warmup", min=0.0, help="seconds of load before each timed window"),
    agents: str | None = typer.Option(None, "--agents", help="only these agents of CONFIG: critic,scout"),
    attach: str | None = typer.Option(
        None, "--attach", help="load agents already running: NAME=URL,... (or bare URLs); starts nothing"
    ),
    attach_config: bool = typer.Option(
        False, "--attach-config", help="CONFIG's agents are already running (at their ports); starts nothing"
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="attached: the running colo's state dir (agents' pids and limits)"
    ),
    lone: float = typer.Option(0.0, "--lone", min=0.0, help="then each agent alone, one row per request, SECS"),
    start_timeout: float = typer.Option(600.0, "--start-timeout", min=1.0, help="seconds to wait for RUNNING"),
    procs: int = typer.Option(
        0, "--procs", min=0, max=64, help="load-generator processes (0: one per 4 CPUs, at most one per agent)"
    ),
) -> None:
    """The agents of CONFIG through their HTTP APIs, as users reach them: N clients per agent, all together.

    For each --mode colo runs CONFIG as `colo up` does (`--no-mps` for timeslice) in a fresh state dir, waits
    until every agent is RUNNING, sends `POST /infer` (--batch × --seq-len, clamped to each model's worst case)
    from N clients per agent for --duration seconds at each --clients count, and stops them. With --attach or
    --attach-config it loads agents already running (any build) and --mode only labels the results.
    """
    from colo.bench.agents_run import AgentsBench, choose_targets, load_processes
    from colo.bench.options import parse_agent_modes, parse_int_list
    from colo.spec.load import load_config

    counts = parse_int_list(clients, "--clients")
    modes = parse_agent_modes(opts.mode)
    targets = choose_targets(
        load_config(config) if config is not None else None,
        attach=[u.strip() for u in (attach or "").split(",") if u.strip()],
        attach_config=attach_config,
        modes=modes,
        batch=batch,
        seq_len=seq_len,
        new_tokens=new_tokens,
        only=[a.strip() for a in (agents or "").split(",") if a.strip()],
    )
    title = f"{config.name if config else 'attached agents'}: {len(targets)} agents through HTTP, {batch}×{seq_len}"
    bench = AgentsBench(
        title,
        config,
        targets,
        clients=counts,
        modes=modes,
        window_secs=opts.duration,
        warmup_secs=warmup,
        lone_secs=lone,
        attached=bool(attach) or attach_config,
        state_dir=state_dir,
        start_timeout_secs=start_timeout,
        gpu_index=opts.gpu,
        processes=procs or load_processes(len(targets), os.cpu_count()),
        settings={"batch": batch, "seq_len": seq_len, "new_tokens": new_tokens},
    )
    _execute_agents(bench, out=opts.out, as_json=opts.as_json)


def _execute_agents(bench: AgentsBench, *, out: Path, as_json: bool) -> None:
    from rich.table import Table

    from colo.bench.agents_report import point_line as agents_point_line
    from colo.bench.agents_report import terminal_tables
    from colo.bench.agents_run import run_agents_bench
    from colo.bench.harness import sigterm_as_exit
    from colo.bench.report import to_json, write_reports
    from colo.bench.run import gpu_backend

    view = err_console if as_json else console

    def on_message(msg: str) -> None:
        view.print(safe(msg), highlight=False)

    def on_point(point: PointResult) -> None:
        view.print(safe(agents_point_line(point)), highlight=False)

    def on_result(partial: BenchResult) -> None:  # a run cut short keeps what it measured
        write_reports([partial], out, stem="agents")

    with sigterm_as_exit():
        result = run_agents_bench(
            bench, backend=gpu_backend(required=False), progress=on_message, on_point=on_point, on_result=on_result
        )
    paths = write_reports([result], out, stem="agents")
    if as_json:
        import sys

        sys.stdout.write(to_json([result]) + "\n")
        return
    for title, header, rows in terminal_tables(result):
        table = Table(title=safe(title))
        for col in header:
            table.add_column(col, justify="left" if col in ("mode", "agent") else "right")
        for row in rows:
            table.add_row(*(safe(c.replace("**", "")) for c in row))
        console.print(table)
    console.print(safe(f"reports: {paths['json']}, {paths['md']}, {paths['png']}"), highlight=False)


# --- capacity and advise ----------------------------------------------------------------------------------


def capacity_command(
    model: str = typer.Argument(..., help="model id (catalog or config), or a name with --memory"),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU name, e.g. H100, 'RTX 3090', A100-40GB"),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="GPU memory, e.g. 80GiB"),
    memory: str | None = typer.Option(None, "--memory", help="the model's requirement, e.g. 4.9GiB"),
    config: Path | None = typer.Option(None, "--config", "-c", help="colo.yaml: the model's memory and policy"),
    dtype: str = typer.Option("float32", "--dtype", help="for the estimate: float32, float16, bfloat16"),
    batch: int = typer.Option(1, "--batch", min=1, help="for the estimate: worst-case batch"),
    seq: int = typer.Option(512, "--seq", min=1, help="for the estimate: worst-case tokens (prompt)"),
    new_tokens: int = typer.Option(0, "--new-tokens", min=0, help="for the estimate: generated tokens"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """How many instances of MODEL fit on one GPU: theoretically, with margins, and under the client cap.

    The requirement: --memory, else the model's declared memory in --config, else colo's offline estimate
    for --dtype / --batch / --seq (catalog models).
    """
    from colo.bench.capacity import capacity_for, resolve_gpu_memory, resolve_requirement

    cfg = None
    if config is not None:
        from colo.spec.load import load_config

        cfg = load_config(config)
    try:
        requirement, source = resolve_requirement(
            model, memory=memory, config=cfg, dtype=dtype, batch_size=batch, seq_len=seq, new_tokens=new_tokens
        )
        gpu_name, gpu_bytes = resolve_gpu_memory(gpu=gpu, gpu_memory=gpu_memory, config=cfg)
        answer = capacity_for(
            model, requirement, gpu_name, gpu_bytes, policy=cfg.policy if cfg else None, requirement_source=source
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if as_json:
        print_json(answer.to_dict())
        return
    for line in answer.lines():
        console.print(safe(line), highlight=False)


def _history(cfg: Any, state_dir: Path | None, since: str | None) -> list[Any]:
    """The usage history of the state dir (none when colo never ran there)."""
    import time

    from colo.cli.tune_cmd import parse_since
    from colo.supervise.statedir import StateDirPaths, resolve_state_dir
    from colo.supervise.store import Store

    secs = parse_since(since)
    store = Store.open_existing(StateDirPaths(resolve_state_dir(cfg, state_dir)).db)
    if store is None:
        return []
    try:
        return store.usage(since=time.time() - secs if secs else 0.0)
    finally:
        store.close()


def advise_command(
    config: Path = typer.Argument(..., help="colo.yaml"),
    bench: Path | None = typer.Option(None, "--bench", help="bench.json from `colo bench` on this GPU"),
    gpu: list[str] = typer.Option([], "--gpu", help="plan for this GPU instead of the config's, e.g. 80GiB"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Read the usage history of this state dir (default: the config's)."
    ),
    since: str | None = typer.Option(None, "--since", help="Only usage history newer than this: '30m', '7d'."),
) -> None:
    """MPS, separate servers (time-slicing) or MIG for CONFIG, with the reasons that applied (from the plan,
    a `colo bench` result, and the usage history `colo up` recorded in the state dir, when there is one)."""
    from colo.bench.advise import advise
    from colo.bench.options import load_results
    from colo.cli.plan_cmd import load_plannable
    from colo.supervise import planning

    cfg = load_plannable(str(config), gpu)
    the_plan = planning.plan_config(cfg).plan  # the one planning pipeline (gpus: auto reads NVML)
    runs = load_results(bench) if bench is not None else []
    advice = advise(cfg, the_plan, runs, _history(cfg, state_dir, since))
    if as_json:
        print_json(advice.to_dict())
        return
    console.print(f"[bold]{safe(advice.headline())}[/]", highlight=False)
    for reason in advice.reasons:
        console.print(f"  {reason.symbol()} {safe(reason.text)}", highlight=False)
    for note in advice.notes:
        console.print(f"  · {safe(note)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``bench`` (a group), ``capacity`` and ``advise``."""
    app.add_typer(bench_app, name="bench")
    app.command("capacity")(capacity_command)
    app.command("advise")(advise_command)


# --- llama.cpp: a random-weight GGUF, and clients spread over several servers ------------------------------


@bench_command("make-gguf", ("as_json",))
def bench_make_gguf(
    opts: BenchOptions,
    out: Path = typer.Option(..., "--out", help="the GGUF file to write"),
    shape: str = typer.Option("llama-3.1-8b", "--shape", help="llama-3.1-8b, llama-3.2-1b or tiny"),
    quant: str = typer.Option("q4_k", "--quant", help="q4_k, q8_0 or f16"),
    vocab_from: Path | None = typer.Option(None, "--vocab-from", help="vocab-only GGUF (ggml-vocab-llama-bpe.gguf)"),
    layers: int = typer.Option(0, "--layers", min=0, help="override the shape's layer count"),
) -> None:
    """Write a random-weight Llama GGUF for llama.cpp (needs the `gguf` package: llama.cpp's gguf-py)."""
    from colo.bench.gguf_random import write_random_gguf
    from colo.bench.llama_shapes import shape_named

    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "the `gguf` package is missing", hint="put llama.cpp's gguf-py on PYTHONPATH, or pip install gguf"
        ) from exc
    done = write_random_gguf(out, shape_named(shape, layers=layers), quant=quant, vocab_from=vocab_from)
    if opts.as_json:
        print_json(done.to_dict())
        return
    console.print(
        safe(
            f"wrote {done.path}: {units.format_size(done.size_bytes)}, {done.tensors} tensors, {done.seconds:.1f} s"
        ),
        highlight=False,
    )


@bench_command("servers", HTTP_SHARED, concurrency=HTTP_CLIENTS)
@with_option_groups
def bench_servers(
    opts: BenchOptions,
    url: list[str] = typer.Option(..., "--url", help="a server's base URL; repeat: client i -> URL i mod count"),
    setup: str = typer.Option(..., "--setup", help="how the servers run: mps, timeslice, or batching (one server)"),
    request: HttpRequest = _request_options(
        "openai-chat", "openai-chat, ollama-chat or ollama-generate", "model name the servers know"
    ),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="llama-server: always generate --max-tokens"),
    title: str = typer.Option("llama-server", "--title"),
    append: bool = typer.Option(False, "--append", help="keep the other setups already in OUT/bench.json"),
) -> None:
    """N clients over running servers, recorded as one setup (the guide's table: OUT/bench.json/md + servers.md)."""
    from colo.bench.format import point_line
    from colo.bench.options import load_results, parse_int_list
    from colo.bench.report import to_json
    from colo.bench.run import gpu_backend
    from colo.bench.servers import merge_into, run_servers, table_markdown, write_servers_reports

    params = request.params() | {"ignore_eos": ignore_eos}
    if ignore_eos and request.api != "openai-chat":
        raise UsageError("--ignore-eos is llama-server's extension of the OpenAI API: use --api openai-chat")
    out = opts.out
    previous = load_results(out / "bench.json")[0] if append and (out / "bench.json").exists() else None
    result = run_servers(
        url,
        parse_int_list(opts.concurrency, "--concurrency"),
        params,
        setup=setup,
        duration_secs=opts.duration,
        title=title,
        backend=gpu_backend(required=False),
        gpu_index=opts.gpu,
        on_point=lambda p: err_console.print(safe(point_line(p)), highlight=False),
    )
    result = merge_into(previous, result)
    write_servers_reports(result, out)
    if opts.as_json:
        import sys

        sys.stdout.write(to_json([result]) + "\n")
        return
    console.print("\n".join(table_markdown(result)), highlight=False, markup=False)


# `colo bench embeddings` (OpenAI /v1/embeddings on any server) lives in its own module.
from colo.cli.bench_embeddings_cmd import bench_embeddings  # noqa: E402

bench_app.command("embeddings")(bench_embeddings)
