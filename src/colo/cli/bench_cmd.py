"""``colo bench``: measure co-location — N instances (separate processes) together under time-slicing and/or
colo's own MPS daemon, a colo.yaml's agents together, or clients on servers that run elsewhere.

Each subcommand family lives in its own module; this one puts them into the ``bench`` group, in the order
``colo bench --help`` lists them. What they share (options, the run and its table) is
:mod:`colo.cli.bench_options`.

- instances colo starts: ``encoder``, ``decode``, ``cmd``, ``forwards`` (:mod:`colo.cli.bench_instances_cmd`);
- servers that run elsewhere: ``http``, ``servers`` and llama.cpp's ``make-gguf`` (:mod:`colo.cli.bench_servers_cmd`);
- a colo.yaml's agents through their HTTP APIs: ``agents`` (:mod:`colo.cli.bench_agents_cmd`);
- OpenAI ``/v1/embeddings`` on any server: ``embeddings`` (:mod:`colo.cli.bench_embeddings_cmd`).
"""

from __future__ import annotations

import typer

from colo.cli import bench_agents_cmd, bench_instances_cmd, bench_servers_cmd
from colo.cli.bench_embeddings_cmd import bench_embeddings

bench_app = typer.Typer(
    help="Measure N instances together, MPS vs time-slicing, against the merged-batch bound.",
    no_args_is_help=True,
)
bench_app.command("encoder")(bench_instances_cmd.bench_encoder)
bench_app.command("decode")(bench_instances_cmd.bench_decode)
bench_app.command("cmd")(bench_instances_cmd.bench_cmd)
bench_app.command("http")(bench_servers_cmd.bench_http)
bench_app.command("forwards")(bench_instances_cmd.bench_forwards)
bench_app.command("agents")(bench_agents_cmd.bench_agents)
bench_app.command("make-gguf")(bench_servers_cmd.bench_make_gguf)
bench_app.command("servers")(bench_servers_cmd.bench_servers)
bench_app.command("embeddings")(bench_embeddings)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group."""
    app.add_typer(bench_app, name="bench")
