"""The orchestrator's API served from a thread of the ``colo up`` process (uvicorn on a socket bound here, a
clear warning when it cannot start). ``colo serve`` runs it in the foreground instead (``colo.api.server``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from colo.errors import ColoError
from colo.supervise.orchestrator import Orchestrator


@dataclass
class BackgroundApi:
    """The API serving in a daemon thread: its address; :meth:`stop` asks uvicorn to exit."""

    url: str
    server: object

    def stop(self) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]  # uvicorn.Server


def serve_in_thread(orch: Orchestrator, state_dir: Path, warn: Callable[[str], None]) -> BackgroundApi | None:
    """Serve ``orch``'s API in a daemon thread with its token (``<state_dir>/api-token``) and record its
    address in the store (``colo status`` asks it first). None, after a ``warn``ing, when it cannot start:
    no uvicorn/fastapi here, a bad ``api:`` setting, a busy port."""
    try:
        import uvicorn

        from colo.api.app import create_app
        from colo.api.server import bind_socket, binding_for, exposure_warning
    except ImportError as exc:
        warn(f"the HTTP API is not available ({exc}); `colo status` reads the state dir instead")
        return None
    try:
        binding = binding_for(orch.config().api, state_dir)
        message = exposure_warning(binding.host, binding.open_reads)
        if message:
            warn(message)
        sock = bind_socket(binding.host, binding.port)
        app = create_app(orch, token=binding.token, open_reads=binding.open_reads)
    except (ColoError, ValueError) as exc:
        warn(f"the HTTP API did not start: {exc}")
        return None
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    )
    threading.Thread(target=lambda: server.run(sockets=[sock]), name="colo-api", daemon=True).start()
    orch.store.set_meta("api_url", binding.url)  # `colo status` asks the live API first
    return BackgroundApi(binding.url, server)
