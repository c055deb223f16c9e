"""Fuzzing ``colo validate`` and ``colo plan`` through the CLI runner: no traceback, no hang, exit 0/1/2.

Two halves: a corpus of hostile files (``tests/fixtures/hostile/`` plus special files made here: FIFOs,
devices, directories) and hypothesis-generated documents (random text, random YAML trees with hostile
strings, the newsroom example with one value replaced). Runs in CI; the whole file takes well under a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from colo.cli.main import app

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "fixtures" / "hostile"
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.yaml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash (which would fail these tests) writes its traceback under the state dir: keep it in tmp.
    monkeypatch.setenv("COLO_STATE_DIR", str(tmp_path_factory.mktemp("state")))


def run_ok(args: list[str]) -> str:
    """Run colo; assert an exit code of 0/1/2 and no traceback. Returns the combined output."""
    result = runner.invoke(app, args)
    out = result.output
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, out[-2000:], result.exception)
    assert "Traceback" not in out, out[-2000:]
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return out


def check_file(path: Path) -> None:
    for command in (["validate"], ["validate", "--json"], ["plan"], ["plan", "--json"]):
        out = run_ok([*command, str(path)])
        assert "\x1b" not in out, f"a raw escape reached the terminal: {out[-500:]!r}"


CORPUS_FILES = sorted(p for p in CORPUS.iterdir() if p.name != "README.md")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus(path: Path) -> None:
    check_file(path)


def test_markup_is_printed_literally() -> None:
    out = run_ok(["plan", str(CORPUS / "markup_names.yaml")])
    assert "[red]gone[/red]" in out and "m[/x]" in out
    out = run_ok(["validate", str(CORPUS / "escape_key.yaml")])
    assert "\\e[2J" in out


@pytest.mark.timeout(20)
def test_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    weird = tmp_path / "dir[x]y[red].yaml"
    weird.mkdir()
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    for path in (fifo, weird, link, Path("/dev/zero"), Path("/dev/urandom"), tmp_path / "missing[/].yaml"):
        if path.is_symlink() or path.exists() or "missing" in path.name:
            out = run_ok(["validate", str(path)])
            assert "error" in out


# --- property-based -----------------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["[/]", "[/x]", "[red]x[/red]", "\x1b[31m", "\x00", "\ud800", "١٢GiB", "1:30", "yes", ".inf",
                     "*a", "&a", "!!python/none", "<<", "~", "-1", "0x10", "1e999", "\u202e", "%", "@"]),
)
scalars = st.one_of(hostile_text, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none())
trees = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(hostile_text, c, max_size=4),
                     max_leaves=20)
# COLO_FUZZ_EXAMPLES=2000 for a longer hunt; CI keeps the default.
FUZZ = settings(max_examples=int(os.environ.get("COLO_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=list(HealthCheck))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.timeout(60)
@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = _write(tmp_path_factory.mktemp("fz"), "c.yaml", raw)
    run_ok(["validate", str(path)])


@pytest.mark.timeout(60)
@FUZZ
@given(tree=trees)
def test_random_documents(tmp_path_factory: pytest.TempPathFactory, tree: object) -> None:
    text = yaml.safe_dump(tree, allow_unicode=True) if not isinstance(tree, str) else tree
    path = _write(tmp_path_factory.mktemp("fz"), "c.yaml", text.encode("utf-8", "surrogatepass"))
    run_ok(["validate", str(path)])
    run_ok(["plan", str(path)])


_BASE = yaml.safe_load(NEWSROOM.read_text())


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_ALL_PATHS = _paths(_BASE)[1:]


@pytest.mark.timeout(60)
@FUZZ
@given(where=st.sampled_from(_ALL_PATHS), value=trees, rename=st.booleans())
def test_newsroom_with_one_value_replaced(
    tmp_path_factory: pytest.TempPathFactory, where: tuple[object, ...], value: object, rename: bool
) -> None:
    import copy

    doc = copy.deepcopy(_BASE)
    node = doc
    for part in where[:-1]:
        node = node[part]  # type: ignore[index]
    last = where[-1]
    if rename and isinstance(node, dict) and isinstance(value, str):
        node[value] = node.pop(last)
    else:
        node[last] = value  # type: ignore[index]
    text = yaml.safe_dump(doc, allow_unicode=True)
    path = _write(tmp_path_factory.mktemp("fz"), "c.yaml", text.encode("utf-8", "surrogatepass"))
    run_ok(["validate", str(path)])
    run_ok(["plan", str(path)])
