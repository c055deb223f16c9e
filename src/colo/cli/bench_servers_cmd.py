"""``colo bench http|servers|make-gguf``: servers that run outside colo's benchmark — N HTTP clients asking
one of them (Ollama or OpenAI-compatible) the same request, or spread over several llama-servers and recorded
as one setup — and the random-weight GGUF that llama.cpp's servers load for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer

from colo import units
from colo.cli.bench_options import BenchOptions, bench_command
from colo.cli.common import OptionGroup, console, err_console, print_json, safe, with_option_groups
from colo.errors import UsageError

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


@bench_command(HTTP_SHARED, concurrency=HTTP_CLIENTS)
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


# --- llama.cpp: a random-weight GGUF, and clients spread over several servers ------------------------------


@bench_command(("as_json",))
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


@bench_command(HTTP_SHARED, concurrency=HTTP_CLIENTS)
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
