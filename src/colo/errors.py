"""colo's error tree. Every failure a person can act on is one of these.

Outside errors (pydantic, PyYAML, pynvml, OSError from subprocesses, sqlite3) are translated into this tree
at the one module that talks to that outside system (``raise XError(...) from exc``), so the CLI and the API
only ever see ``ColoError`` and print ``str(err)``: one paragraph, naming the file / field / value, and a
hint of what to do.

::

    ColoError                    exit 1 unless said otherwise
    ├── UsageError               exit 2  bad command-line arguments
    ├── ConfigError              exit 2  a user's file is unreadable or invalid (file, field path, line)
    ├── PlanError                exit 1  the configuration is valid but cannot be planned
    │   └── DoesNotFitError              an agent fits on no GPU
    ├── GpuError                 exit 2  NVML: no driver, no permission, not supported
    ├── MpsError                 exit 2  nvidia-cuda-mps-control missing, daemon not answering, pipe dir
    ├── ProfileError             exit 1  a profiling child failed
    ├── SupervisorError          exit 1  agents could not be run or reached
    └── OrchestratorUnreachable  exit 1  no orchestrator API answers where the CLI looked
"""

from __future__ import annotations


class ColoError(Exception):
    """Base of colo's errors: a message, an optional hint, and the exit code the CLI uses."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — {self.hint}"
        return self.message


class UsageError(ColoError):
    """Bad command-line arguments or API parameters."""

    exit_code = 2


class ConfigError(ColoError):
    """A user's file is unreadable or invalid.

    ``source`` is the file (or "<request body>"), ``field`` a dotted path such as ``agents.critic.margin``,
    ``line`` 1-based where known.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        field: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.field = field
        self.line = line
        where = ""
        if source:
            where = source + (f":{line}" if line else "")
        if field:
            where = f"{where} {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.detail = message


class PlanError(ColoError):
    """The configuration is valid but cannot be turned into a plan."""


class DoesNotFitError(PlanError):
    """At least one agent fits on no GPU; ``agents`` names them."""

    def __init__(self, message: str, *, agents: tuple[str, ...] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.agents = agents


class GpuError(ColoError):
    """NVML failed: no driver, no permission, or a query this GPU does not support."""

    exit_code = 2


class MpsError(ColoError):
    """The MPS control daemon could not be started, reached or stopped."""

    exit_code = 2


class ProfileError(ColoError):
    """Profiling a model in its child process failed."""


class SupervisorError(ColoError):
    """Agents could not be launched, adopted or stopped."""


class OrchestratorUnreachable(ColoError):
    """No colo orchestrator answers at the address the CLI looked."""
