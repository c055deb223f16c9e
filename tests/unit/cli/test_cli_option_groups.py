"""cli/common.OptionGroup: options several commands share, declared once, shown in the group's place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from typer.testing import CliRunner

from colo.cli.common import OptionGroup, with_option_groups


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int | None


SHAPE: Any = OptionGroup(
    Shape,
    (
        ("batch", int, typer.Option(1, "--batch", min=1, help="batch size")),
        ("seq", int | None, typer.Option(None, "--seq", help="tokens")),
    ),
)


def _app(seen: list[tuple[str, Shape, bool]]) -> typer.Typer:
    app = typer.Typer()

    @app.command("run")
    @with_option_groups
    def run(name: str = typer.Argument(...), shape: Shape = SHAPE, verbose: bool = typer.Option(False)) -> None:
        seen.append((name, shape, verbose))

    @app.command("other")
    def other() -> None:
        pass

    return app


def test_the_group_arrives_as_one_value() -> None:
    seen: list[tuple[str, Shape, bool]] = []
    result = CliRunner().invoke(_app(seen), ["run", "x", "--seq", "9", "--verbose"])
    assert result.exit_code == 0, result.output
    assert seen == [("x", Shape(batch=1, seq=9), True)]


def test_the_group_options_stand_in_its_place_and_keep_their_checks() -> None:
    app = _app([])
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert help_text.index("--batch") < help_text.index("--seq") < help_text.index("--verbose")
    assert CliRunner().invoke(app, ["run", "x", "--batch", "0"]).exit_code == 2
