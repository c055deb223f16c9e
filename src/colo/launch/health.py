"""Health checks: is an agent ready? http (2xx), tcp (connects), command (exit 0), or none.

A check is one blocking probe bounded by ``timeout_secs``. :class:`HealthChecker` is the real prober; the
agent state machine takes any ``Probe`` (a callable) so tests inject their own answers. ``type: none`` is
not probed: the agent state machine treats "up for ``start_secs``" as ready.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colo.spec.config import HealthCheck


@dataclass(frozen=True)
class HealthResult:
    """One probe's answer: ``ok`` and a short human detail (status code, error)."""

    ok: bool
    detail: str = ""
    body: dict[str, Any] | None = None  # an http check's JSON object body (at most BODY_MAX_BYTES), if any


Probe = Callable[[HealthCheck], HealthResult]

#: Longest health body read as JSON (the built-in agent's is about 2 KiB).
BODY_MAX_BYTES = 64 * 1024


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def http_probe(url: str, timeout_secs: float) -> HealthResult:
    """GET ``url``; any 2xx is healthy."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_secs) as resp:
            code = int(resp.status)
            raw = resp.read(BODY_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return HealthResult(False, f"HTTP {exc.code} from {url}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return HealthResult(False, f"GET {url}: {reason}")
    body = _json_object(raw) if len(raw) <= BODY_MAX_BYTES else None
    return HealthResult(200 <= code < 300, f"HTTP {code}", body)


def tcp_probe(host: str, port: int, timeout_secs: float) -> HealthResult:
    """Connect to ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_secs):
            return HealthResult(True, f"connected to {host}:{port}")
    except OSError as exc:
        return HealthResult(False, f"connect {host}:{port}: {exc.strerror or exc}")


def command_probe(argv: list[str], timeout_secs: float) -> HealthResult:
    """Run ``argv``; exit code 0 is healthy."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_secs, check=False)
    except subprocess.TimeoutExpired:
        return HealthResult(False, f"{argv[0]} timed out after {timeout_secs:g} s")
    except OSError as exc:
        return HealthResult(False, f"cannot run {argv[0]}: {exc.strerror or exc}")
    tail = (done.stdout or done.stderr or b"").decode(errors="replace").strip().splitlines()
    detail = f"exit code {done.returncode}" + (f": {tail[-1][:200]}" if tail else "")
    return HealthResult(done.returncode == 0, detail)


class HealthChecker:
    """The real :data:`Probe`: dispatches on ``check.type``."""

    def __call__(self, check: HealthCheck) -> HealthResult:
        if check.type == "http" and check.url:
            return http_probe(check.url, check.timeout_secs)
        if check.type == "tcp" and check.port is not None:
            return tcp_probe(check.host, check.port, check.timeout_secs)
        if check.type == "command" and check.command:
            return command_probe(list(check.command), check.timeout_secs)
        return HealthResult(True, "no health check")
