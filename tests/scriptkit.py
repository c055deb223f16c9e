"""Import a file of ``scripts/`` (not a package) as a module, and serve an agent to drive, for the tests of the
acceptance scripts."""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from colo.spec.config import ModelSpec

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as module ``name`` (loaded once, then from ``sys.modules``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no scripts/{name}.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def served_agent(agent: str, model_id: str, spec: ModelSpec) -> Iterator[str]:
    """A built-in agent runtime of ``model_id`` on the CPU, served by uvicorn on a free loopback port in a thread;
    yields its URL, and stops the server and the runtime afterwards (the scripts' tests drive it over HTTP)."""
    import uvicorn

    from colo.modelserver.app import create_app
    from colo.modelserver.runtime import AgentRuntime

    runtime = AgentRuntime(agent=agent, specs=[(model_id, spec)], device="cpu")
    runtime.load()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.close()
