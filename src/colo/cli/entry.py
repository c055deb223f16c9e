"""The ``colo`` console script: starts what ``colo up`` will wait for before the CLI is even imported.

For ``colo up CONFIG`` in the foreground the agents' launcher starts first (:mod:`colo.launch.prestart`: its
seconds of torch imports then overlap the CLI's own imports and planning), then :func:`colo.cli.main.main` runs
the command; a launcher nobody claimed is ended when the command does.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point."""
    from colo.launch import prestart

    prestart.for_command_line(sys.argv[1:])
    try:
        from colo.cli.main import main as cli_main

        cli_main()
    finally:
        prestart.discard()
