"""Running the API with uvicorn: loopback by default, a warning otherwise, a clear error for a busy port."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from colo.api.source import ApiSource
from colo.errors import UsageError
from colo.spec.config import ApiSettings

log = logging.getLogger("colo.api")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, open_reads: bool) -> str | None:
    """The warning to print for a non-loopback ``host``, else None."""
    if is_loopback(host):
        return None
    if open_reads:
        exposure = "anyone who reaches it can read the plan, the agents and the GPU state (read routes are open)"
    else:
        exposure = "every route, reads too, needs the token, which travels unencrypted over plain HTTP"
    return (
        f"the colo API listens on {host}, not loopback: {exposure}. "
        "Put it behind a firewall or a TLS proxy, or use --host 127.0.0.1."
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``. Raises UsageError (exit 2) for a busy port or a bad address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it every keep-alive response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use",
                hint=f"is a colo orchestrator already running? try `colo status`, or pick another --port "
                f"(`ss -ltnp 'sport = :{port}'` shows who holds it)",
            ) from exc
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})", hint="check --host") from exc
    sock.set_inheritable(True)
    return sock


def serve(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8014,
    open_reads: bool = True,
    warn: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` until interrupted. Binds first (so a busy port is a UsageError, not a uvicorn trace).

    ``warn`` receives the non-loopback warning (default: the ``colo.api`` logger).
    """
    import uvicorn

    message = exposure_warning(host, open_reads)
    if message:
        (warn or log.warning)(message)
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,  # request lines would carry nothing secret, but headers are never logged either way
        lifespan="off",
        server_header=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@dataclass(frozen=True)
class ApiBinding:
    """Where and how an app listens: the effective host/port, whether reads are open, and the token."""

    host: str
    port: int
    open_reads: bool
    token: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def binding_for(
    settings: ApiSettings,
    state_dir: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    open_reads: bool | None = None,
) -> ApiBinding:
    """Resolve host/port (flags over config), whether reads are open (on loopback unless configured off;
    elsewhere only when asked with ``open_reads=True``) and the token (``$COLO_API_TOKEN`` or
    ``<state_dir>/api-token``, created at first start).
    """
    from colo.api.auth import load_or_create_token

    h = host or settings.host
    p = port or settings.port
    reads = settings.open_reads and (is_loopback(h) or bool(open_reads))
    if open_reads is False:
        reads = False
    return ApiBinding(h, p, reads, load_or_create_token(state_dir))


def run_api(source: ApiSource, binding: ApiBinding, *, warn: Callable[[str], None] | None = None) -> None:
    """Build the app over ``source`` and serve it in this thread until interrupted (``colo serve``)."""
    from colo.api.app import create_app

    app = create_app(source, token=binding.token, open_reads=binding.open_reads)
    serve(app, host=binding.host, port=binding.port, open_reads=binding.open_reads, warn=warn)


class ApiThread:
    """The API served from a background thread (``colo up`` runs its supervisor loop in the main thread).

    ``start()`` binds first and raises UsageError for a busy port; ``stop()`` asks uvicorn to exit and joins.
    """

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 8014, log_level: str = "warning"):
        import uvicorn

        self.host = host
        self._sock = bind_socket(host, port)
        self.port = int(self._sock.getsockname()[1])  # port 0 -> the one the OS picked
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="colo-api", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self, ready_timeout_secs: float = 10.0) -> ApiThread:
        """Start serving; returns once uvicorn reports it started. Raises UsageError if it does not."""
        self._thread.start()
        deadline = time.monotonic() + ready_timeout_secs
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise UsageError(f"the API did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_secs: float = 5.0) -> None:
        """Ask the server to exit, wait up to ``timeout_secs``, close the socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_secs)
        self._sock.close()
