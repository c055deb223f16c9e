"""Bad input: every broken file gives one ConfigError naming the file, field and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo.errors import ConfigError
from colo.spec import load_config, load_config_text

GOOD = """\
gpus:
  - memory: 24GiB
models:
  m1: {memory: 1GiB}
agents:
  a:
    models: [m1]
"""


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="c.yaml")
    return info.value


def test_good_minimal_config() -> None:
    c = load_config_text(GOOD)
    assert c.agents["a"].priority == "medium"
    assert c.models["m1"].memory_bytes == 1024**3


def test_newsroom_example_loads(newsroom_path: Path) -> None:
    c = load_config(newsroom_path)
    assert len(c.agents) == 9 and len(c.models) == 11


def test_broken_yaml_names_line() -> None:
    e = err("gpus:\n  - memory: 24GiB\nmodels: {m1: {memory: 1GiB}\nagents: x\n")
    assert e.source == "c.yaml" and e.line is not None and "not valid YAML" in str(e)


def test_empty_file() -> None:
    assert "is empty" in str(err(""))


def test_top_level_list() -> None:
    assert "mapping at the top level" in str(err("- a\n- b\n"))


def test_unknown_key_has_path_and_line() -> None:
    e = err(GOOD + "    margn: 1GiB\n")
    assert e.field == "agents.a.margn" and e.line == 8 and "unknown key" in str(e)


def test_wrong_type() -> None:
    e = err(GOOD.replace("models: [m1]", "models: m1"))
    assert e.field == "agents.a.models"


@pytest.mark.parametrize(
    ("replacement", "needle"),
    [("memory: -1GiB", "negative"), ("memory: 1024", "too small"), ("memory: 24", "too small"),
     ("memory: 24parsecs", "unknown unit"), ("memory: 24.5", "no unit")],
)
def test_bad_sizes(replacement: str, needle: str) -> None:
    e = err(GOOD.replace("memory: 24GiB", replacement))
    assert e.field is not None and e.field.startswith("gpus") and needle in str(e)


def test_unitless_model_memory() -> None:
    e = err(GOOD.replace("m1: {memory: 1GiB}", "m1: {memory: 1.5}"))
    assert e.field == "models.m1.memory" and "no unit" in str(e)


def test_duplicate_agent_names() -> None:
    e = err(GOOD + "  a:\n    models: [m1]\n")
    assert "duplicate key 'a'" in str(e) and e.line == 8 and e.field == "agents.a"


def test_unknown_model_reference() -> None:
    e = err(GOOD.replace("models: [m1]", "models: [m2]"))
    assert e.field == "agents.a.models[0]" and "unknown model 'm2'" in str(e) and e.line == 7


def test_absurd_numbers() -> None:
    assert "less than or equal" in str(err(GOOD.replace("count", "x").replace("- memory: 24GiB", "- {memory: 24GiB, count: 100000}")))
    assert err(GOOD.replace("memory: 24GiB", "memory: 9000TiB")).field == "gpus[0].memory"


def test_bad_agent_name_and_env() -> None:
    assert "not an agent name" in str(err(GOOD.replace("  a:\n", "  'bad name':\n")))
    e = err(GOOD + "    env: {CUDA_MPS_PINNED_DEVICE_MEM_LIMIT: 1G}\n")
    assert "set by colo" in str(e)


def test_bad_margin_text() -> None:
    e = err(GOOD + "    margin: lots\n")
    assert e.field == "agents.a.margin"


def test_health_check_needs_target() -> None:
    e = err(GOOD + "    health: {type: http}\n")
    assert "needs 'url'" in str(e)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_error_is_one_paragraph() -> None:
    e = err(GOOD + "    margn: 1GiB\n")
    assert "\n" not in str(e) and str(e).startswith("c.yaml:8 agents.a.margn")
