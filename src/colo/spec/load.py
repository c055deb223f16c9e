"""Reading colo.yaml (or the same as JSON) with errors a person can act on.

Every failure becomes one :class:`~colo.errors.ConfigError` naming the file, the field path, the line where
known, and what to write instead. Nothing here touches a GPU.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import ValidationError

from colo.errors import ConfigError
from colo.spec.config import ColoConfig
from colo.spec.yaml_lines import BoundsError, DuplicateKeyError, Path, line_of, load_with_lines

MAX_CONFIG_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Loaded:
    """A parsed document and where it came from (``lines`` maps field paths to 1-based lines)."""

    source: str
    data: Any
    lines: dict[Path, int]


def dotted(path: Path) -> str:
    """``("agents", "critic", "models", 0)`` -> ``agents.critic.models[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_KIND = (
    (stat.S_ISDIR, "is a directory, not a file", "pass the path of a colo.yaml"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file", "save the configuration to a file first"),
    (stat.S_ISCHR, "is a character device, not a regular file", "pass the path of a colo.yaml"),
    (stat.S_ISBLK, "is a block device, not a regular file", "pass the path of a colo.yaml"),
    (stat.S_ISSOCK, "is a socket, not a regular file", "pass the path of a colo.yaml"),
)


def _refuse_special(mode: int, source: str) -> None:
    for test, message, hint in _KIND:
        if test(mode):
            raise ConfigError(message, source=source, hint=hint)
    if not stat.S_ISREG(mode):
        raise ConfigError("is not a regular file", source=source, hint="pass the path of a colo.yaml")


def read_bytes(path: str | FsPath, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """Read a user's file: regular files only, at most ``max_bytes`` (counted while reading, not from ``stat``).

    FIFOs, devices (``/dev/zero``), sockets and directories are refused before they are read, and the file
    is opened non-blocking so a FIFO swapped in after the check cannot hang the reader. Raises ConfigError.
    """
    source = str(path)
    try:
        _refuse_special(os.stat(path).st_mode, source)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            _refuse_special(os.fstat(fd).st_mode, source)  # the file that was opened, not the one checked
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        raise ConfigError("no such file", source=source, hint="check the path") from exc
    except PermissionError as exc:
        raise ConfigError("permission denied", source=source, hint="check the file's mode") from exc
    except IsADirectoryError as exc:
        raise ConfigError("is a directory, not a file", source=source, hint="pass the path of a colo.yaml") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot be read ({reason})", source=source) from exc
    if size > max_bytes:
        raise ConfigError(
            f"is over {max_bytes // (1024 * 1024)} MiB; colo reads configuration files up to that size",
            source=source,
        )
    return b"".join(chunks)


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 bytes (a leading BOM allowed) as text; ConfigError naming the line of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"is not UTF-8 text (byte {exc.start})", source=source, line=line, hint="save the file as UTF-8"
        ) from exc


def read_text(path: str | FsPath) -> str:
    """Read a user's file as text with :func:`read_bytes`'s bounds. Raises ConfigError."""
    return decode_text(read_bytes(path), str(path))


def parse_document(text: str, source: str) -> Loaded:
    """YAML or JSON text -> plain data with line numbers; empty or non-mapping documents are errors."""
    try:
        data, lines = load_with_lines(text)
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{exc}", source=source, field=dotted(exc.path), line=exc.line,
            hint="each name may appear once; rename or remove one",
        ) from exc
    except BoundsError as exc:
        raise ConfigError(f"refused: {exc}", source=source, line=exc.line, hint=exc.hint) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "syntax error"
        raise ConfigError(
            f"not valid YAML/JSON: {problem}", source=source, line=line,
            hint="check indentation, quotes and colons at that line",
        ) from exc
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"not valid YAML/JSON: {exc}", source=source) from exc
    if data is None:
        raise ConfigError("is empty", source=source, hint="see examples/newsroom/colo.yaml for a start")
    if not isinstance(data, dict):
        raise ConfigError(
            f"must hold a mapping at the top level, not a {type(data).__name__}", source=source, line=1
        )
    return Loaded(source=source, data=data, lines=lines)


def _child(value: Any, part: Any) -> tuple[bool, Any]:
    if isinstance(value, dict) and isinstance(part, str) and part in value:
        return True, value[part]
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return True, value[part]
    return False, None


def data_path(loc: tuple[Any, ...], data: Any, *, keep_last: bool = False) -> Path:
    """The parts of a pydantic error location that are keys/indices of ``data``.

    pydantic adds its own parts (``function-after[...]``, union branches like ``list[GpuInventory]``); they
    are dropped by walking the data, so a user's key that happens to contain ``[`` stays. ``keep_last``
    keeps a final key that is absent (a missing field).
    """
    out: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        found, child = _child(current, part)
        if found:
            out.append(part)
            current = child
        elif keep_last and i == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return tuple(out)


def config_error_from(exc: ValidationError, loaded: Loaded) -> ConfigError:
    errors = exc.errors(include_url=False)
    # A union (``gpus: auto | [...]``) reports every branch; the literal branch is rarely what was meant.
    specific = [e for e in errors if not any(isinstance(p, str) and p.startswith("literal[") for p in e["loc"])]
    errors = specific or errors
    err = max(errors, key=lambda e: len(e["loc"])) if len(errors) > 1 and specific else errors[0]
    path = data_path(err["loc"], loaded.data, keep_last=err["type"] == "missing")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {path[-1]!r}" if path else "unknown key"
        hint = "check the spelling; `colo schema` lists every key"
    elif err["type"] == "missing":
        hint = "add it; `colo schema` describes it"
    else:
        value = err.get("input")
        if isinstance(value, str | int | float | bool) and len(repr(value)) < 60:
            msg = f"{msg} (got {value!r})"
        hint = None
    more = f" ({len(errors) - 1} more error(s) after fixing this one)" if len(errors) > 1 else ""
    return ConfigError(
        msg + more, source=loaded.source, field=dotted(path) or None, line=line_of(loaded.lines, path), hint=hint
    )


def config_from_loaded(loaded: Loaded) -> ColoConfig:
    """Validate parsed data into a :class:`ColoConfig` and cross-check references between sections."""
    try:
        config = ColoConfig.model_validate(loaded.data)
    except ValidationError as exc:
        raise config_error_from(exc, loaded) from exc
    check_references(config, loaded)
    return config


def check_references(config: ColoConfig, loaded: Loaded | None = None) -> None:
    """Agents name known models; pins name known nodes. Raises ConfigError at the first broken reference."""
    source = loaded.source if loaded else "<config>"
    lines = loaded.lines if loaded else {}
    known = sorted(config.models)
    nodes = {g.node for g in config.gpus} if isinstance(config.gpus, list) else None
    for name, agent in config.agents.items():
        for i, model in enumerate(agent.models):
            if model not in config.models:
                path: Path = ("agents", name, "models", i)
                close = [k for k in known if model.split("/")[-1].lower() in k.lower()][:3]
                hint = f"did you mean {', '.join(close)}?" if close else "add it under 'models:' first"
                raise ConfigError(
                    f"unknown model {model!r}", source=source, field=dotted(path),
                    line=line_of(lines, path), hint=hint,
                )
        if nodes is not None and agent.node is not None and agent.node not in nodes:
            path = ("agents", name, "node")
            raise ConfigError(
                f"unknown node {agent.node!r}; the inventory has {', '.join(sorted(nodes))}",
                source=source, field=dotted(path), line=line_of(lines, path),
            )


def undotted(field: str) -> Path:
    """``agents.critic.models[0]`` -> ``("agents", "critic", "models", 0)`` (the inverse of :func:`dotted`)."""
    out: list[str | int] = []
    for part in field.split("."):
        name, *indices = part.split("[")
        if name:
            out.append(name)
        out.extend(int(i.rstrip("]")) for i in indices if i.rstrip("]").isdigit())
    return tuple(out)


def in_file(err: ConfigError, path: str | FsPath) -> ConfigError:
    """``err`` raised about a configuration that came from the file ``path`` by way of a plan or the API (which
    saw no file: ``<request body>``, or no source at all) as an error about that file: its name and, when
    ``err`` names a field, that field's line there. ``err`` itself when it already names a file."""
    if err.source not in (None, "<request body>", "<config>"):
        return err
    line = None
    if err.field:
        try:
            line = line_of(parse_document(read_text(path), str(path)).lines, undotted(err.field))
        except ConfigError:
            line = None
    return ConfigError(err.detail, source=str(path), field=err.field, line=line, hint=err.hint)


def load_config(path: str | FsPath) -> ColoConfig:
    """Read and validate a colo.yaml. Raises ConfigError (exit 2) with file, field and line."""
    return config_from_loaded(parse_document(read_text(path), str(path)))


def load_config_text(text: str, source: str = "<request body>") -> ColoConfig:
    """Validate a colo.yaml given as text."""
    return config_from_loaded(parse_document(text, source))


def load_config_bytes(raw: bytes, source: str = "<request body>", max_bytes: int = MAX_CONFIG_BYTES) -> ColoConfig:
    """Validate a colo.yaml given as bytes (the API's ``POST /apply``), with the file reader's bounds."""
    if len(raw) > max_bytes:
        raise ConfigError(f"is over {max_bytes} bytes", source=source)
    return config_from_loaded(parse_document(decode_text(raw, source), source))
