"""Models the launcher builds once (memory.build.prebuild) and its forked agents take (take_prebuilt): exactly
the model the agent would have built itself, within a byte budget, forgotten when the config changes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from colo.errors import ProfileError
from colo.launch.forkserver import Preloader
from colo.memory import build as build_mod
from colo.memory.build import build, keep_prebuilt, model_bytes, prebuild, take_prebuilt
from colo.modelserver.command import builtin_agent_command
from colo.modelserver.loading import load_model
from colo.spec.config import ModelSpec

TINY = "google/bert_uncased_L-2_H-128_A-2"
GPT = "distilgpt2"


@pytest.fixture(autouse=True)
def no_prebuilt_left() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    keep_prebuilt(set())
    torch.set_num_threads(threads)  # Preloader.build_one sets it to 1


def shapes(module: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("model_id", "dtype"), [(TINY, "float32"), (GPT, "float16")])
def test_a_prebuilt_model_is_the_model_the_agent_would_build(model_id: str, dtype: str) -> None:
    size = prebuild(model_id, dtype=dtype, max_bytes=1 << 30)
    own = build(model_id, dtype=dtype, device="cpu")
    assert size == model_bytes(own) > 0
    assert prebuild(model_id, dtype=dtype, max_bytes=1 << 30) == 0  # built once
    assert take_prebuilt(model_id, dtype="bfloat16", device="cpu") is None  # another dtype: not this one
    taken = take_prebuilt(model_id, dtype=dtype, device="cpu")
    assert taken is not None
    assert type(taken.module) is type(own.module) and not taken.module.training
    assert shapes(taken.module) == shapes(own.module)
    assert taken.source == own.source and taken.dtype == dtype and taken.device == "cpu"
    assert take_prebuilt(model_id, dtype=dtype, device="cpu") is None  # taken once


def test_a_model_past_the_budget_is_not_built() -> None:
    with pytest.raises(ProfileError, match="larger than the 1 MiB a launcher prebuilds"):
        prebuild(TINY, max_bytes=1 << 20)
    assert take_prebuilt(TINY, dtype="float32", device="cpu") is None


def test_load_model_takes_the_prebuilt_model(caplog: pytest.LogCaptureFixture) -> None:
    prebuild(TINY, max_bytes=1 << 30)
    held = build_mod._prebuilt[(TINY, "float32", None)].module
    with caplog.at_level(logging.INFO):
        loaded = load_model(TINY, ModelSpec(batch_size=2, max_seq_len=16), device="cpu")
    assert loaded.module is held and "prebuilt by the launcher" in caplog.text
    again = load_model(TINY, ModelSpec(batch_size=2, max_seq_len=16), device="cpu")
    assert again.module is not held  # nothing left to take: built afresh


def write_config(path: Path, models: dict[str, list[str]], paths: dict[str, Path] | None = None) -> None:
    ids = sorted({m for ms in models.values() for m in ms})
    where = {m: f", path: {p}" for m, p in (paths or {}).items()}
    text = "version: 1\ngpus: [{name: T, memory: 8GiB}]\nmodels:\n"
    text += "".join(f"  {m}: {{memory: 1GiB, batch_size: 2, max_seq_len: 16{where.get(m, '')}}}\n" for m in ids)
    text += "agents:\n" + "".join(f"  {a}:\n    models: [{', '.join(ms)}]\n" for a, ms in models.items())
    path.write_text(text, encoding="utf-8")


def saved(model_id: str, folder: Path) -> Path:
    """``model_id`` (random weights) saved as real weights in ``folder``."""
    build(model_id).module.save_pretrained(folder)
    return folder


def test_the_preloader_builds_each_model_once_while_idle_and_forgets_an_old_config(tmp_path: Path) -> None:
    cfg = tmp_path / "colo.yaml"
    tiny = saved(TINY, tmp_path / "tiny")
    write_config(cfg, {"a": [TINY], "b": [TINY]}, {TINY: tiny})
    argv = {name: builtin_agent_command(name, cfg, 9000, device="cpu") for name in ("a", "b", "c")}
    pre = Preloader()
    pre.before_fork(argv["a"])
    assert pre.pending == [(TINY, "float32", str(tiny))]  # queued, not built before the fork
    assert pre.to_import is not None and pre.to_import[1][0][0] == TINY  # nor its classes imported
    assert pre.has_work()
    pre.build_one()  # the first idle task: the config's model classes
    assert pre.to_import is None and set(pre.held) == set()
    pre.build_one()
    assert set(pre.held) == {(TINY, "float32", str(tiny))} and pre.pending == []
    assert torch.get_num_threads() == 1  # the zygote stays single-threaded
    pre.before_fork(argv["b"])  # the same model: nothing new to build
    assert pre.pending == []
    pre.child_setup()
    assert torch.get_num_threads() == pre.torch_threads  # a child gets its threads back
    gpt = saved(GPT, tmp_path / "gpt")
    write_config(cfg, {"c": [GPT], "d": [TINY]}, {GPT: gpt})
    os.utime(cfg, ns=(1, 1))  # a new version of the file
    pre.before_fork(argv["c"])
    assert pre.held == {} and pre.pending == [(GPT, "float32", str(gpt))]
    assert take_prebuilt(TINY, dtype="float32", device="cpu", path=str(tiny)) is None  # the old config's: gone
    pre.before_fork(builtin_agent_command("d", cfg, 9000, device="cpu"))
    # Random weights are not prebuilt: the agent fills them on its device faster than a copy moves there.
    assert pre.pending == [(GPT, "float32", str(gpt))] and (TINY, "float32", None) in pre.skipped


def test_a_model_that_cannot_be_built_is_skipped_for_good(tmp_path: Path) -> None:
    cfg = tmp_path / "colo.yaml"
    tiny = saved(TINY, tmp_path / "tiny")
    write_config(cfg, {"a": [TINY]}, {TINY: tiny})
    pre = Preloader(max_model_bytes=1 << 20)
    argv = builtin_agent_command("a", cfg, 9000, device="cpu")
    pre.before_fork(argv)
    pre.build_one()  # the classes
    pre.build_one()
    assert pre.held == {} and (TINY, "float32", str(tiny)) in pre.skipped
    pre.before_fork(argv)
    assert pre.pending == []


def test_the_zygote_builds_only_after_a_quiet_spell_without_fork_requests() -> None:
    from colo.launch.forkserver import PREBUILD_QUIET_SECS, build_wait_secs

    assert build_wait_secs(False, 100.0) is None  # nothing queued: no build, whatever the quiet
    assert build_wait_secs(True, 0.0) == PREBUILD_QUIET_SECS  # just asked for a fork: more may follow
    assert build_wait_secs(True, PREBUILD_QUIET_SECS - 0.5) == pytest.approx(0.5)
    assert build_wait_secs(True, PREBUILD_QUIET_SECS) == 0.0 and build_wait_secs(True, 60.0) == 0.0


def test_the_launcher_imports_a_configs_model_classes_before_it_is_ready(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "colo.yaml"
    write_config(cfg, {"a": [TINY], "b": [GPT]}, {})
    probe = (
        "import sys; from colo.launch.forkserver import import_models_of; secs = import_models_of(sys.argv[1]); "
        "print(secs > 0, *(m in sys.modules for m in ('transformers.models.bert.modeling_bert', "
        "'transformers.models.gpt2.modeling_gpt2')))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(cfg)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]  # both agents' classes, in a fresh interpreter
    broken = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=120
    )
    assert broken.returncode == 0 and broken.stdout.split()[1:] == ["False", "False"]  # never raises: agents import
    assert "importing the model classes of" in broken.stderr and "missing.yaml" in broken.stderr
