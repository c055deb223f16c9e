"""Writing files atomically, and where colo keeps its state.

Every file colo writes (allocation files, the model database, tokens, rendered manifests) goes through
:func:`write_atomic`: a temporary file in the same directory, fsync, then ``os.replace`` — a reader sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from colo.errors import ConfigError


def write_atomic(path: str | Path, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (parents created). Raises ConfigError naming the path."""
    target = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(
            f"cannot write ({exc.strerror or exc})", source=str(target), hint="check the directory exists and is writable"
        ) from exc
    return target


def default_state_dir() -> Path:
    """``$COLO_STATE_DIR``, else ``/var/lib/colo`` for root, else ``$XDG_STATE_HOME/colo`` (~/.local/state/colo)."""
    env = os.environ.get("COLO_STATE_DIR")
    if env:
        return Path(env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/colo")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "colo"


def state_dir(configured: str | None = None) -> Path:
    """The state directory: the config's ``state_dir`` when set, else :func:`default_state_dir`."""
    return Path(configured).expanduser() if configured else default_state_dir()
