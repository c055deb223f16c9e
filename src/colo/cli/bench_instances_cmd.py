"""``colo bench encoder|decode|cmd|forwards``: instances colo starts itself, one process each — N copies of one
load (an encoder's forwards, a generator's decode, a user command) at each concurrency, or every agent of a
colo.yaml together as bare forwards — under time-slicing and/or colo's own MPS daemon
(:func:`colo.cli.bench_options.run_plan` runs them and prints the table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from colo.cli.bench_options import AGENTS_SHARED, ALL_SHARED, BenchOptions, bench_command, run_plan
from colo.cli.common import console, err_console


@bench_command()
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


@bench_command(concurrency={"default": "1,2,3"})
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


@bench_command(tuple(k for k in ALL_SHARED if k != "bound"))
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


@bench_command(AGENTS_SHARED)
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
    run_plan(plan, out=opts.out, as_json=opts.as_json, gpu_kind=True, stdout=console, stderr=err_console)
