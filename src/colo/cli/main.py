"""The ``colo`` command: a typer app; each command module registers its commands on it.

Command modules import heavy libraries (torch, FastAPI, pynvml) inside the command functions so that
``colo --help`` and ``colo plan`` stay fast.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

from colo import __version__
from colo.errors import ColoError


def click_exits() -> tuple[type[Exception], ...]:
    """The exceptions with which typer's click ends a command on its own terms, which must pass through
    colo's error path untouched: ``typer.Exit``, ``typer.Abort`` and click's ``ClickException`` (usage errors:
    a missing argument, an unknown option or command; typer prints them and exits 2).

    Found from what ``typer`` exposes, never from a module path: typer 0.29 carries its own copy of click
    (``typer._click``) while earlier releases use the ``click`` package, and catching the other copy's
    classes turned every usage error into a crash. ``ClickException`` is the base of ``typer.BadParameter``.
    """
    base = next((c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"), typer.BadParameter)
    return (typer.Exit, typer.Abort, base)


CLICK_EXITS = click_exits()


class ColoGroup(TyperGroup):
    """The root command group, colo's one error path.

    A ColoError from any command is one paragraph on stderr and its exit code (1 findings/failures, 2 usage
    or configuration); click's own exits (:data:`CLICK_EXITS`) pass through; a reader of stdout or stderr
    that went away (``colo … | head``) ends colo quietly, exit 141; anything else is a crash inside colo: one
    line naming the file with the traceback, exit 70.
    """

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        from colo.cli.common import closed_output_fds, exit_closed_output, report_crash, report_error

        try:
            return super().invoke(ctx)
        except ColoError as err:
            report_error(err)
            ctx.exit(err.exit_code)
        except CLICK_EXITS:
            raise
        except BrokenPipeError as exc:
            closed = closed_output_fds()
            if closed:
                exit_closed_output(closed)
            ctx.exit(report_crash(exc))  # a pipe to a child process broke: a bug, not a reader that left
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
    "colo.cli.advise_cmd",
    "colo.cli.up_cmd",
    "colo.cli.launcher_cmd",
    "colo.cli.status_cmd",
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
    from colo.cli.common import closed_output_fds, exit_closed_output

    try:
        try:
            app()
        finally:
            # What is still buffered is written now, not at interpreter exit, where a closed pipe would print
            # "Exception ignored … BrokenPipeError" and exit 120.
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        exit_closed_output(closed_output_fds() or [1])
    except SystemExit as exc:
        # rich's Console.on_broken_pipe (every console: ours, typer's help) and typer's own EPIPE handler exit 1
        # while handling the BrokenPipeError: the same closed pipe, so the same quiet 141.
        if exc.code == 1 and isinstance(exc.__context__, BrokenPipeError):
            exit_closed_output(closed_output_fds())
        raise
