"""``colo bench embeddings``: N clients on any server's OpenAI ``/v1/embeddings`` (colo's agent, infinity-emb,
TEI), texts of about 16 and 128 tokens; req/s, seq/s, p50/p99 and errors per point
(:mod:`colo.bench.loads.embeddings`)."""

from __future__ import annotations

import typer


def bench_embeddings(
    url: list[str] = typer.Option(..., "--url", help="a server's base URL; repeat to compare servers"),
    label: list[str] = typer.Option([], "--label", help="a name per --url (default: the URL)"),
    model: str = typer.Option(..., "--model", "-m", help="the model id the servers know"),
    clients: str = typer.Option("1,4,16", "--clients", help="concurrent clients per point"),
    tokens: str = typer.Option("16,128", "--tokens", help="tokens per text ([CLS] and [SEP] included)"),
    texts: int = typer.Option(1, "--texts", min=1, help="texts per request"),
    window: float = typer.Option(10.0, "--window", help="timed seconds per point"),
    warmup: float = typer.Option(2.0, "--warmup", help="untimed seconds before each point"),
    encoding_format: str = typer.Option("float", "--encoding-format", help="float or base64"),
    health_timeout: float = typer.Option(0.0, "--health-timeout", help="wait for each /health first (s)"),
) -> None:
    """OpenAI /v1/embeddings on running servers: one JSON line per point, then a Markdown table."""
    from colo.bench.loads.embeddings import main

    argv = ["--model", model, "--clients", clients, "--tokens", tokens, "--texts", str(texts)]
    argv += ["--window", str(window), "--warmup", str(warmup), "--encoding-format", encoding_format]
    argv += ["--health-timeout", str(health_timeout), "--table"]
    for u in url:
        argv += ["--url", u]
    for lb in label:
        argv += ["--label", lb]
    raise typer.Exit(main(argv))
