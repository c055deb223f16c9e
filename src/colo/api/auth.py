"""The API token: where it comes from, and the check every guarded route runs.

The token is ``$COLO_API_TOKEN`` when set, else the contents of ``<state_dir>/api-token``, generated at the
orchestrator's first start (32 random bytes, URL-safe, file mode 0600). Clients send
``Authorization: Bearer <token>``; the comparison is constant-time (:func:`hmac.compare_digest`). The token is
never logged and never appears in an error message.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from colo.errors import ConfigError
from colo.files import write_atomic

TOKEN_FILE = "api-token"
TOKEN_ENV = "COLO_API_TOKEN"


def token_path(state_dir: Path) -> Path:
    """``<state_dir>/api-token``."""
    return Path(state_dir) / TOKEN_FILE


def read_token(state_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """The token a client should send: ``$COLO_API_TOKEN``, else the state dir's file, else None.

    Raises ConfigError when the file exists but cannot be read (for example, owned by root).
    """
    environ = os.environ if env is None else env
    given = environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    path = token_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the API token ({exc.strerror or exc})",
            source=str(path),
            hint=f"run as the orchestrator's user, or set {TOKEN_ENV}",
        ) from exc
    return text or None


def load_or_create_token(state_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """The orchestrator's token: ``$COLO_API_TOKEN``, else the file, else a new one written with mode 0600.

    A file readable by others is tightened to 0600. Raises ConfigError when the state dir is not writable.
    """
    token = read_token(state_dir, env)
    environ = os.environ if env is None else env
    path = token_path(state_dir)
    if token is not None:
        if not environ.get(TOKEN_ENV, "").strip() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
        return token
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n", mode=0o600)
    return token


def bearer_matches(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>``; constant-time in the token's contents."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))
