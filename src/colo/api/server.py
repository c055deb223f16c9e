"""Running the API with uvicorn: loopback by default, a warning otherwise, a clear error for a busy port."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable

from fastapi import FastAPI

from colo.errors import UsageError

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
    reads = "read routes also need the token" if not open_reads else "read routes are open to the network"
    return (
        f"the colo API listens on {host}, not loopback: anyone who reaches it can read the plan and GPU state"
        f" ({reads}); mutations need the token. Put it behind a firewall or use --host 127.0.0.1."
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``. Raises UsageError (exit 2) for a busy port or a bad address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc})", hint="check --host"
        ) from exc
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
