"""The ``colo`` command: a typer app; each command module registers its commands on it.

Command modules import heavy libraries (torch, FastAPI, pynvml) inside the command functions so that
``colo --help`` and ``colo plan`` stay fast.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
from typer.core import TyperGroup

from colo import __version__
from colo.errors import ColoError


class ColoGroup(TyperGroup):
    """The root command group, colo's one error path.

    A ColoError from any command is one paragraph on stderr and its exit code (1 findings/failures, 2 usage
    or configuration); click's own exits pass through; anything else is a crash inside colo: one line naming
    the file with the traceback, exit 70.
    """

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        from colo.cli.common import report_crash, report_error

        try:
            return super().invoke(ctx)
        except ColoError as err:
            report_error(err)
            ctx.exit(err.exit_code)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.exceptions.ClickException):
            raise
        except Exception as exc:  # a bug in colo: say where the details are, not a 200-line traceback
            ctx.exit(report_crash(exc))


app = typer.Typer(
    cls=ColoGroup,
    name="colo",
    help="Run many model services safely on shared NVIDIA GPUs with CUDA MPS: know, plan, run, serve, prove.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Each module defines ``register(app)``. Listed here so the command set is visible in one place.
COMMAND_MODULES = [
    "colo.cli.api_cmd",
    "colo.cli.gpu_cmd",
    "colo.cli.plan_cmd",
    "colo.cli.bench_cmd",
    "colo.cli.run_cmd",
    "colo.cli.render_cmd",
    "colo.cli.memory_cmd",
    "colo.cli.tune_cmd",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"colo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """colo: know what each model needs, plan MPS limits, run and supervise agents, serve, benchmark."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console-script entry point (errors are handled by :class:`ColoGroup`)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
