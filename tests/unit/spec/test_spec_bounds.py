"""The bounded reader: alias bombs, recursive aliases, depth, bytes actually read, special files, YAML 1.2."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from colo.errors import ConfigError
from colo.spec import load_config, load_config_text
from colo.spec.load import load_config_bytes, read_bytes, read_text
from colo.spec.yaml_lines import MAX_DEPTH, load_with_lines

GOOD = "gpus: [{memory: 24GiB}]\nmodels: {m: {memory: 1GiB}}\nagents: {a: {models: [m]}}\n"


def alias_bomb(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="c.yaml")
    return info.value


def test_alias_bomb_is_refused_fast() -> None:
    text = alias_bomb(9)
    assert len(text) < 500
    start = time.perf_counter()
    e = err(text)
    assert time.perf_counter() - start < 1.0
    assert "alias" in str(e) and e.line is not None and e.source == "c.yaml"


def test_small_aliases_still_work() -> None:
    text = "x: &m {memory: 1GiB}\n" + GOOD.replace("{m: {memory: 1GiB}}", "{m: *m}").replace("gpus", "gpus")
    data, _ = load_with_lines(text)
    assert data["models"]["m"] == {"memory": "1GiB"}


@pytest.mark.parametrize("text", ["a: &l [*l]\n", "a: &m {b: *m}\n", "a: &l [1, [2, *l]]\n"])
def test_recursive_alias(text: str) -> None:
    assert "recursive alias" in str(err(text))


def test_undefined_alias_is_a_syntax_error() -> None:
    assert "c.yaml" in str(err("a: *nope\n"))


@pytest.mark.parametrize("text", ["a: " + "[" * 5000 + "]" * 5000, "{" * 5000 + "}" * 5000, '{"a":' * 3000 + "1" + "}" * 3000])
def test_deep_nesting_no_recursion_error(text: str) -> None:
    assert f"nested more than {MAX_DEPTH} levels" in str(err(text))


def test_lone_surrogate_in_a_json_key() -> None:
    e = err('{"models": {"\\ud800": {}}, "agents": {}}')
    assert "surrogate" in str(e)


def test_yaml_1_1_surprises_are_strings() -> None:
    data, _ = load_with_lines("a: 1:30\nb: yes\nc: off\nd: 0755\ne: 0x10\nf: 0o17\ng: true\nh: 1.5\ni: ~\nj: 2001-01-01\n")
    assert data == {"a": "1:30", "b": "yes", "c": "off", "d": 755, "e": 16, "f": 15, "g": True, "h": 1.5,
                    "i": None, "j": "2001-01-01"}


def test_sexagesimal_port_refused() -> None:
    e = err(GOOD + "api: {port: 1:30}\n")
    assert e.field == "api.port" and "1:30" in str(e)


@pytest.mark.parametrize("value", ["yes", "true", "1.0", '"2"'])
def test_counts_refuse_booleans_and_text(value: str) -> None:
    e = err(GOOD.replace("{memory: 24GiB}", f"{{memory: 24GiB, count: {value}}}"))
    assert e.field == "gpus[0].count"


@pytest.mark.parametrize("size", ["١٢GiB", "１２GiB", "12GiB\u0663"])
def test_unicode_digits_in_sizes(size: str) -> None:
    e = err(GOOD.replace("24GiB", size))
    assert "ASCII digits" in str(e) or "not a size" in str(e)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_sizes(value: str) -> None:
    e = err(GOOD.replace("24GiB", value))
    assert "GiB'" in str(e) and "infGiB" not in str(e) and "nanGiB" not in str(e)


def test_empty_gpu_list() -> None:
    e = err(GOOD.replace("[{memory: 24GiB}]", "[]"))
    assert e.field == "gpus" and "no GPUs listed" in str(e)


def test_health_url_must_be_a_url() -> None:
    e = err(GOOD.replace("{models: [m]}", '{models: [m], health: {type: http, url: "not a url"}}'))
    assert e.field == "agents.a.health.url" and e.line == 3


def test_env_nul_byte_is_the_env_field() -> None:
    e = err(GOOD.replace("{models: [m]}", '{models: [m], command: [x], env: {K: "a\\0b"}}'))
    assert e.field == "agents.a.env" and "NUL" in str(e) and "K" in str(e)


def test_user_key_with_brackets_keeps_its_path() -> None:
    e = err(GOOD.replace("{models: [m]}", '{models: [m], "x[/]": 1}'))
    assert e.field == "agents.a.x[/]"


# --- files -------------------------------------------------------------------------------------------------


def test_reads_at_most_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_bytes(b"#" * 2000)
    assert len(read_bytes(p, max_bytes=2000)) == 2000
    with pytest.raises(ConfigError, match="over"):
        read_bytes(p, max_bytes=1999)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_character_devices_refused(device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    with pytest.raises(ConfigError, match="character device"):
        load_config(device)


def test_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        read_text(tmp_path)


@pytest.mark.timeout(10)
def test_fifo_without_writer_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[BaseException] = []

    def read() -> None:
        try:
            load_config(fifo)
        except ConfigError as exc:
            result.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5), "reading a FIFO hung"
    assert "FIFO" in str(result[0])


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config("bad\0name.yaml")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_request_body_bytes_use_the_same_bounds() -> None:
    with pytest.raises(ConfigError, match="alias"):
        load_config_bytes(alias_bomb(8).encode())
    assert load_config_bytes(GOOD.encode()).agents["a"].models == ["m"]
