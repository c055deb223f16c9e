"""Helpers that test folders share, imported as ``testkit``.

``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there (pytest's default ``prepend`` import mode),
the same mechanism that finds ``api_fakes`` beside the API tests and ``mps_daemons`` beside the GPU tests.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colo.memory.db import ModelEntry, Provenance

ROOT = Path(__file__).resolve().parent.parent
FAKE_LLAMA_SERVER = ROOT / "tests" / "fakes" / "fake_llama_server.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child python, with this checkout's ``src`` first on PYTHONPATH."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra)
    return e


def offline_child_env() -> dict[str, str]:
    """:func:`child_env` for a GPU machine's child: unbuffered output and no wait on the Hugging Face Hub (the
    device has no network)."""
    e = child_env(PYTHONUNBUFFERED="1")
    e.setdefault("HF_HUB_OFFLINE", "1")
    return e


def wait_for(
    pred: Callable[[], Any], timeout: float = 30.0, step: float = 0.25, tick: Callable[[], None] | None = None
) -> Any:
    """Poll ``pred`` (after ``tick()``, when given) every ``step`` seconds until it is truthy (returned) or
    ``timeout`` seconds pass (the last falsy value is returned)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        value = pred()
        if value:
            return value
        time.sleep(step)
    return value


def wait_until_empty(check: Callable[[], list[str]], timeout: float, step: float = 0.25) -> list[str]:
    """``check()`` polled every ``step`` seconds until it finds nothing (``[]``), or its last findings after
    ``timeout`` seconds."""
    last: list[str] = []

    def ok() -> bool:
        nonlocal last
        last = check()
        return not last

    wait_for(ok, timeout=timeout, step=step)
    return last


def measured_entry(
    model: str,
    nvml_peak_bytes: int,
    *,
    gpu: str,
    weights_bytes: int,
    reserved_peak_bytes: int,
    date: str = "2026-11-21T18:00:00+00:00",
    kind: str = "measured",
) -> ModelEntry:
    """A model-database row as ``colo profile`` writes it (float32, batch 32, 512 tokens); the overhead is the
    NVML peak less the allocator's reserved peak."""
    return ModelEntry(
        model=model,
        dtype="float32",
        batch_size=32,
        seq_len=512,
        new_tokens=0,
        kind=kind,  # type: ignore[arg-type]
        nvml_peak_bytes=nvml_peak_bytes,
        weights_bytes=weights_bytes,
        reserved_peak_bytes=reserved_peak_bytes,
        overhead_bytes=nvml_peak_bytes - reserved_peak_bytes,
        provenance=Provenance(gpu=gpu, date=date),
    )


def two_encoder_config_yaml(policy: str = "") -> str:
    """A colo.yaml (10 GiB GPU) of two encoder agents: ``small`` (bert L-2, 1 GiB, port 9301) and ``big``
    (roberta-base, 2 GiB, port 9302), both at batch 32 of 512 tokens; ``policy`` (a flow mapping such as
    ``{history_window: 10s}``) is written as the ``policy:`` line when given."""
    policy_line = f"policy: {policy}\n" if policy else ""
    return (
        "version: 1\n"
        "gpus: [{memory: 10GiB}]\n"
        f"{policy_line}"
        "models:\n"
        "  google/bert_uncased_L-2_H-128_A-2: {memory: 1GiB, batch_size: 32, max_seq_len: 512}\n"
        "  roberta-base: {memory: 2GiB, batch_size: 32, max_seq_len: 512}\n"
        "agents:\n"
        "  small: {models: [google/bert_uncased_L-2_H-128_A-2], port: 9301}\n"
        "  big: {models: [roberta-base], port: 9302}\n"
    )


def health_ok(port: int, timeout_secs: float = 2.0) -> bool:
    """``GET http://127.0.0.1:PORT/health`` answered 2xx within ``timeout_secs``."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_secs) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


#: The prefix of this test process's short state dirs under /tmp (:func:`short_state_dir`).
SHORT_DIR_PREFIX = f"cs{os.getpid()}_"


def short_state_dir() -> Path:
    """A new state dir under /tmp with a short name (MPS pipe paths under it stay within the socket-path limit),
    named for this test process so that cleaning up after a test never touches another run's dirs."""
    return Path(tempfile.mkdtemp(prefix=SHORT_DIR_PREFIX, dir="/tmp"))


#: The ``colo`` console script (``colo.cli.entry``, which starts the early launcher) run by this interpreter.
COLO_ENTRY = (sys.executable, "-c", "import sys; sys.argv[0] = 'colo'; from colo.cli.entry import main; main()")
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"


def bert_tiny_config(path: Path) -> Path:
    """Write a colo.yaml to ``path``: one built-in agent ``solo`` serving bert-tiny (random weights, runs on a
    CPU) on a free port, on an inventory GPU ``T``."""
    path.write_text(
        "version: 1\ngpus: [{name: T, memory: 8GiB}]\n"
        f"models:\n  {BERT_TINY}: {{memory: 1GiB, batch_size: 4, max_seq_len: 32}}\n"
        f"agents:\n  solo:\n    models: [{BERT_TINY}]\n    port: {free_port()}\n"
    )
    return path


def text_or_empty(path: Path) -> str:
    """``path``'s text (undecodable bytes replaced), or "" while it does not exist."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
