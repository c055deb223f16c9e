"""``python -m colo.modelserver.serve``: its command line, its exit codes, and one real start on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from colo.errors import UsageError
from colo.modelserver import serve
from testkit import free_port

ROOT = Path(__file__).resolve().parents[3]
TINY = "google/bert_uncased_L-2_H-128_A-2"


def write_config(folder: Path, port: int | None) -> Path:
    port_line = f"    port: {port}\n" if port else ""
    path = folder / "colo.yaml"
    path.write_text(
        "version: 1\n"
        "gpus: [{name: T, memory: 8GiB}]\n"
        f"models:\n  {TINY}: {{memory: 1GiB, batch_size: 4, max_seq_len: 32}}\n"
        f"agents:\n  solo:\n    models: [{TINY}]\n{port_line}",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def keep_signals() -> Iterator[None]:
    """main() installs SIGTERM/SIGINT handlers; put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_parse_args_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        serve.parse_args(["--agent", "a", "--config", "c", "--port", "0"])
    with pytest.raises(UsageError, match="unknown arguments"):
        serve.parse_args(["--agent", "a", "--config", "c", "--colour", "red"])
    with pytest.raises(UsageError):
        serve.parse_args(["--agent", "a", "--config", "c", "--port", "eighty"])


@pytest.mark.usefixtures("keep_signals")
def test_config_problems_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, None)
    assert serve.main(["--agent", "solo", "--config", str(cfg), "--device", "cpu"]) == 2
    assert "has no port" in capfd.readouterr().err
    assert serve.main(["--agent", "ghost", "--config", str(cfg), "--port", "9", "--device", "cpu"]) == 2
    assert "no agent 'ghost'" in capfd.readouterr().err
    assert serve.main(["--agent", "solo", "--config", str(tmp_path / "none.yaml"), "--port", "9"]) == 2
    assert serve.main(["--agent", "solo", "--config", str(cfg), "--port", "9", "--device", "tpu"]) == 2
    assert serve.main(["--agent", "solo"]) == 2


@pytest.mark.usefixtures("keep_signals")
def test_oom_while_loading_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import colo.memory.build

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")

    monkeypatch.setattr(colo.memory.build, "build", oom)
    cfg = write_config(tmp_path, free_port())
    assert serve.main(["--agent", "solo", "--config", str(cfg), "--device", "cpu"]) == 3
    err = capfd.readouterr().err
    assert f"CUDA out of memory while loading {TINY}" in err and "exiting with code 3" in err


def test_real_process_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "colo.modelserver.serve", "--agent", "solo", "--config", str(cfg),
             "--device", "cpu", "--worst-case"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert health is not None and health.status_code == 200, log_path.read_text()
        body = health.json()
        assert body["pid"] == proc.pid and body["warm_up"].startswith("worst case")
        assert body["cuda_graphs"]["enabled"] is False and body["cuda_graphs"]["off_reason"] == "not on CUDA (cpu)"
        out = httpx.post(f"{url}/infer", json={"texts": ["one", "two three"]}, timeout=30)
        assert out.status_code == 200 and out.json()["embedding_shape"] == [2, 128]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log_path.read_text()
    assert "device cpu" in text and "warm-up 4×32" in text and "stopped" in text
    assert "HTTP: uvicorn with {} on {}".format(*serve.http_stack()) in text


def test_the_http_stack_is_the_fastest_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    installed = {"httptools", "uvloop"}

    def find_spec(name: str, *args: Any) -> Any:
        return real(name, *args) if name not in ("httptools", "uvloop") or name in installed else None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    if real("httptools") and real("uvloop"):
        assert serve.http_stack() == ("httptools", "uvloop")
    installed.clear()  # neither: uvicorn's pure-Python parser and asyncio's loop, as before
    assert serve.http_stack() == ("h11", "asyncio")


def test_batching_options_are_checked() -> None:
    base = ["--agent", "a", "--config", "c"]
    args = serve.parse_args(base)
    assert args.batch_wait_ms is None and args.max_queue == 64 and not args.enable_fault_route
    assert serve.parse_args([*base, "--batch-wait-ms", "5", "--max-queue", "8"]).batch_wait_ms == 5.0
    with pytest.raises(UsageError, match="batch-wait-ms"):
        serve.parse_args([*base, "--batch-wait-ms", "-1"])
    with pytest.raises(UsageError, match="max-queue"):
        serve.parse_args([*base, "--max-queue", "0"])
    assert args.prepare_threads is None and serve.parse_args([*base, "--prepare-threads", "3"]).prepare_threads == 3
    with pytest.raises(UsageError, match="prepare-threads"):
        serve.parse_args([*base, "--prepare-threads", "0"])


def test_import_modules_touches_no_cuda() -> None:
    from colo.spec.config import ModelSpec

    spent = serve.import_modules([(TINY, ModelSpec()), ("no/such-model", ModelSpec())])
    assert not [n for n in serve.UNUSED_OPTIONAL_PACKAGES if n in sys.modules and sys.modules[n] is None]
    assert set(spent) == {"torch", "transformers", "http", "models"}
    assert "transformers.models.bert.modeling_bert" in sys.modules
    assert not torch.cuda.is_initialized()


def test_unused_optional_packages_are_hidden_from_transformers(tmp_path: Path) -> None:
    """An installed scikit-learn and SciPy (here stand-ins that record being imported) are neither imported nor
    seen by transformers while the agent imports; afterwards a model's own code could still import them; one
    imported before is left alone."""
    for name in ("sklearn", "scipy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"import os\nopen(os.environ['MARK'] + '{name}', 'w').close()\n")
    code = (
        "import importlib.util, sys\n"
        "from colo.modelserver import serve\n"
        "assert importlib.util.find_spec('sklearn') is not None\n"
        "with serve.unused_packages_hidden() as hidden:\n"
        "    assert hidden == ['sklearn', 'scipy'], hidden\n"
        "    assert importlib.util.find_spec('sklearn') is None and importlib.util.find_spec('scipy') is None\n"
        "    from transformers.utils import is_scipy_available, is_sklearn_available\n"
        "    assert not is_sklearn_available() and not is_scipy_available()\n"
        "    try:\n        import sklearn\n    except ImportError:\n        pass\n    else:\n        raise SystemExit('imported')\n"
        "assert not is_sklearn_available()  # transformers remembers\n"
        "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules\n"
        "import scipy  # a model's own explicit import still works\n"
    )
    mark = tmp_path / "imported-"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MARK": str(mark)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "imported-sklearn").exists() and (tmp_path / "imported-scipy").exists()
    before = "import sklearn\nfrom colo.modelserver import serve\nwith serve.unused_packages_hidden() as h:\n    assert h == ['scipy']\n"
    r = subprocess.run([sys.executable, "-c", before], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (tmp_path / "imported-sklearn").exists(), r.stderr[-2000:]


def test_the_collector_is_paused_while_importing_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import_modules`` runs with the garbage collector off and leaves it as it found it: on after (also when
    an import step fails), and still off when it was off before."""
    import gc

    seen: list[bool] = []
    monkeypatch.setattr(serve, "_import_all", lambda specs, after_step: seen.append(gc.isenabled()) or {})
    assert gc.isenabled()
    serve.import_modules()
    assert seen == [False] and gc.isenabled()

    def failing(specs: Any, after_step: Any) -> dict[str, float]:
        raise RuntimeError("an import failed")

    monkeypatch.setattr(serve, "_import_all", failing)
    with pytest.raises(RuntimeError):
        serve.import_modules()
    assert gc.isenabled()
    gc.disable()
    try:
        with serve.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_lost_context_exits_with_its_own_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST

    codes: list[int] = []
    left = threading.Event()

    def fake_exit(code: int) -> None:
        codes.append(code)
        left.set()

    monkeypatch.setattr(serve.os, "_exit", fake_exit)
    monkeypatch.setattr(serve.logging, "shutdown", lambda: None)  # keep pytest's handlers open
    monkeypatch.setattr(serve, "CONTEXT_LOST_EXIT_GRACE_SECS", 0.0)
    serve._exit_soon("solo", EXIT_CONTEXT_LOST)
    assert left.wait(5) and codes == [4]


def test_cap_allocator_caps_torch_at_the_limit_only_without_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in agent on a GPU without MPS caps PyTorch's allocator at its planned limit (COLO_MEMORY_CAP_BYTES,
    set by the supervisor); nothing is capped without the variable or on the CPU."""
    import types

    import torch

    from colo.modelserver.command import MEMORY_CAP_VAR, memory_cap_env
    from colo.modelserver.serve import cap_allocator

    calls: list[tuple[float, int]] = []

    def set_fraction(fraction: float, device: object) -> None:
        # as torch 2.11 does on a GPU: a device without an index is refused
        if not isinstance(device, int):
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        calls.append((fraction, device))

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80 << 30))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    assert memory_cap_env(2 << 30) == {MEMORY_CAP_VAR: str(2 << 30)}
    assert cap_allocator("cuda", memory_cap_env(2 << 30)) == 2 << 30  # the cap in bytes, as a fraction to torch
    assert calls == [(pytest.approx(2 / 80), 0)]
    assert cap_allocator("cuda:0", memory_cap_env(1 << 30)) == 1 << 30
    assert calls.pop() == (pytest.approx(1 / 80), 0)
    assert cap_allocator("cuda", {}) is None
    assert cap_allocator("cpu", memory_cap_env(2 << 30)) is None
    assert cap_allocator("cuda", {MEMORY_CAP_VAR: "lots"}) is None
    assert cap_allocator("cuda", memory_cap_env(200 << 30)) == 200 << 30
    assert calls[-1] == (1.0, 0) and len(calls) == 2  # at most the whole device


def test_the_early_context_is_made_on_a_side_thread_and_its_failure_reaches_the_loader() -> None:
    assert not torch.cuda.is_available()  # CI and this machine: a CUDA context cannot be made here
    cpu = serve.EarlyContext("cpu").start()
    assert cpu._thread is None
    cpu.wait()  # nothing to wait for
    cuda = serve.EarlyContext("cuda:0").start()
    assert cuda._thread is not None and cuda._thread.name == "colo-agent-cuda-context"
    with pytest.raises((RuntimeError, AssertionError)):  # torch's "no CUDA" error, raised where the loader waits
        cuda.wait()
