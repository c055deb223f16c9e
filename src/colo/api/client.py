"""``ApiClient``: how the CLI talks to a running orchestrator (``colo status``/``logs``/``agent``/``apply``).

::

    client = ApiClient.from_state_dir(state_dir(config.state_dir), url=None)   # token from <state>/api-token
    client.agents()                       # [AgentStatus dicts]
    client.action("critic", "restart")    # {"agent", "action", "status"}
    orchestrator_client(state_dir)        # the one running there: its address from the store, its token

Errors (all ColoError, so the CLI prints one paragraph and exits with their code):

- nothing answers -> OrchestratorUnreachable "no orchestrator running at 127.0.0.1:8014";
- 401 -> UsageError (wrong or missing token); 404 -> UsageError (no such agent);
- 422 -> ConfigError with the server's field and line, DoesNotFitError with its agents, PredictedOutOfMemory
  (exit 2) when the plan predicts out-of-memory, else PlanError;
- 409 -> SupervisorError;
- anything else -> ApiError with the status and the server's message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import yaml

from colo.api.auth import read_token
from colo.errors import (
    ColoError,
    ConfigError,
    DoesNotFitError,
    OrchestratorUnreachable,
    PlanError,
    SupervisorError,
    UsageError,
)
from colo.spec.config import ApiSettings

DEFAULT_URL = "http://127.0.0.1:8014"
#: Seconds :func:`orchestrator_client` waits for an answer (``colo apply``, ``colo agent``, ``colo tune --apply``).
REQUEST_TIMEOUT_SECS = 60.0

Verb = Literal["start", "stop", "restart"]


class ApiError(ColoError):
    """The orchestrator answered with an error the CLI has no better class for."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def base_url(settings: ApiSettings | None = None, url: str | None = None) -> str:
    """``url`` when given, else ``http://<api.host>:<api.port>`` from the config (0.0.0.0 -> 127.0.0.1)."""
    if url:
        return url.rstrip("/")
    if settings is None:
        return DEFAULT_URL
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _where(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


class ApiClient:
    """A small synchronous client of the colo API. ``transport``/``client`` are for tests."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_secs: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(base_url=self.base_url, timeout=timeout_secs)
        self._headers = headers

    @classmethod
    def from_state_dir(cls, state_dir: Path, url: str | None = None, settings: ApiSettings | None = None) -> ApiClient:
        """A client for the orchestrator whose token is in ``state_dir`` (or ``$COLO_API_TOKEN``)."""
        return cls(base_url(settings, url), read_token(Path(state_dir)))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            headers = {**self._headers, **kwargs.pop("headers", {})}
            response = self._client.request(method, path, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise OrchestratorUnreachable(
                f"no orchestrator running at {_where(self.base_url)}",
                hint="start one with `colo up CONFIG` (or pass --url)",
            ) from exc
        except httpx.TimeoutException as exc:
            raise OrchestratorUnreachable(
                f"the orchestrator at {_where(self.base_url)} did not answer in time",
                hint="it may be busy applying a plan; try again",
            ) from exc
        except httpx.HTTPError as exc:
            raise OrchestratorUnreachable(
                f"cannot talk to the orchestrator at {_where(self.base_url)} ({type(exc).__name__})"
            ) from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> ColoError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("error") or body.get("detail") or response.reason_phrase or "error")
        status = response.status_code
        if status == 401:
            return UsageError(
                "the orchestrator refused the API token",
                hint="run as the orchestrator's user (token in <state dir>/api-token) or set COLO_API_TOKEN",
            )
        if status == 404:
            return UsageError(message)
        if status == 422 and ("field" in body or "line" in body):
            return ConfigError(
                str(body.get("message") or message),
                source=body.get("source"),
                hint=body.get("hint"),
                field=body.get("field"),
                line=body.get("line"),
            )
        if status == 422 and body.get("predicted_oom") is True:
            from colo.supervise.planning import PredictedOutOfMemory

            return PredictedOutOfMemory(message, hint=body.get("hint"))
        if status == 422 and isinstance(body.get("agents"), list):
            return DoesNotFitError(message, agents=tuple(str(a) for a in body["agents"]))
        if status == 422:
            return PlanError(message)
        if status == 409:
            return SupervisorError(message)
        return ApiError(f"the orchestrator answered {status}: {message}", status=status)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # --- routes ----------------------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def agents(self) -> list[dict[str, Any]]:
        """Every agent's status (``AgentStatus.to_dict()`` form)."""
        result: list[dict[str, Any]] = self._json("GET", "/agents")["agents"]
        return result

    def agent(self, name: str) -> dict[str, Any]:
        """One agent's status; UsageError when there is no such agent."""
        result: dict[str, Any] = self._json("GET", f"/agents/{name}")
        return result

    def action(self, name: str, verb: Verb) -> dict[str, Any]:
        """Start, stop or restart ``name``; returns ``{"agent", "action", "status"}``."""
        if verb not in ("start", "stop", "restart"):
            raise UsageError(f"unknown action {verb!r}; use start, stop or restart")
        result: dict[str, Any] = self._json("POST", f"/agents/{name}/{verb}")
        return result

    def apply(self, text: str, config_path: Path | None = None, *, force: bool = False) -> dict[str, Any]:
        """Send a colo.yaml (YAML or JSON); returns what was restarted/started/stopped/unchanged/left out.
        ``config_path``: the file it came from (absolute), which the orchestrator reloads on SIGHUP.
        ``force``: apply a plan that predicts out-of-memory (the body's top-level ``force: true``)."""
        headers = {**self._headers, "Content-Type": "application/yaml"}
        if force:  # beside the colo.yaml's sections, as a mapping: JSON (a YAML subset) keeps it one document
            text, headers["Content-Type"] = json.dumps({**yaml.safe_load(text), "force": True}), "application/json"
        if config_path is not None:
            headers["X-Colo-Config-Path"] = quote(str(config_path))  # percent-encoded: headers are ASCII
        result: dict[str, Any] = self._json("POST", "/apply", content=text.encode("utf-8"), headers=headers)
        return result

    def tune(self, changes: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask the orchestrator to record tuned limits (``TunedChange.to_dict()`` each) and roll them out;
        returns ``{"tuned": [agents], "applied": {...} | None}``."""
        result: dict[str, Any] = self._json("POST", "/tune", json={"changes": changes})
        return result

    def events(self, since: int = 0, limit: int = 200, *, tail: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > ``since``, oldest first: the first ``limit``, or the newest ``tail`` when given."""
        params = {"since": since, **({"tail": tail} if tail is not None else {"limit": limit})}
        result: list[dict[str, Any]] = self._json("GET", "/events", params=params)["events"]
        return result

    def follow_events(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """Events as they happen (the SSE stream), forever or until the server ends the stream."""
        try:
            with self._client.stream(
                "GET", "/events", params={"since": since, "follow": 1}, headers=self._headers, timeout=None
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise OrchestratorUnreachable(
                f"no orchestrator running at {_where(self.base_url)}",
                hint="start one with `colo up CONFIG` (or pass --url)",
            ) from exc

    def allocation(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/mps/allocation")
        return result

    def gpu_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/gpu/info")
        return result

    def metrics_text(self) -> str:
        return self._request("GET", "/metrics").text


def orchestrator_client(state_dir: Path, *, timeout_secs: float = REQUEST_TIMEOUT_SECS) -> ApiClient:
    """A client for the orchestrator running with state dir ``state_dir``: its address as the store records
    it, its token from the state dir (``colo apply``, ``colo agent``, ``colo tune --apply``).

    Raises OrchestratorUnreachable when none runs there, or when it serves no HTTP API (``colo up --no-api``).
    """
    from colo.supervise.statedir import recorded_state, running_orchestrator

    pid = running_orchestrator(state_dir)
    if pid is None:
        raise OrchestratorUnreachable(
            f"colo is not running with state dir {state_dir}",
            hint="start it with `colo up CONFIG` (or pass --state-dir)",
        )
    rec = recorded_state(state_dir, events=0)
    url = rec.api_url if rec is not None else None
    if not url:
        raise OrchestratorUnreachable(
            f"colo is up (pid {pid}) but serves no HTTP API, so it cannot be asked to act",
            hint="start it without --no-api; `colo down` (a signal) still works",
        )
    return ApiClient(str(url), read_token(state_dir), timeout_secs=timeout_secs)
