"""HTTP targets as workloads: Ollama ``/api/chat`` and ``/api/generate``, OpenAI-compatible
``/v1/chat/completions``; each instance is one client sending requests back to back.

Tokens come from the server's own counts: Ollama's ``eval_count`` (and ``eval_duration``, nanoseconds, for
the server-side rate the seed guide reports), OpenAI's ``usage.completion_tokens`` (and, from llama.cpp's
``llama-server``, its ``timings.predicted_ms``: the server-side generation time). Non-streaming requests.
``ignore_eos`` (OpenAI API of llama-server) makes every request generate exactly ``max_tokens`` tokens: what a
random-weight model needs, and what makes runs comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from colo.bench.loads.base import RequestOutcome

APIS = ("ollama-chat", "ollama-generate", "openai-chat")
_PATHS = {"ollama-chat": "/api/chat", "ollama-generate": "/api/generate", "openai-chat": "/v1/chat/completions"}


@dataclass(frozen=True)
class Completion:
    """What one response said: generated tokens, server-side generation seconds (Ollama's ``eval_duration``,
    llama-server's ``timings.predicted_ms``), prompt tokens."""

    completion_tokens: int
    eval_secs: float | None
    prompt_tokens: int | None


def request_body(api: str, model: str, prompt: str, max_tokens: int, ignore_eos: bool = False) -> dict[str, Any]:
    """The JSON body for ``api`` (non-streaming). ``ignore_eos``: llama-server's extension of the OpenAI body
    (Ollama has none: refused there). Raises ValueError for an unknown api."""
    if ignore_eos and api != "openai-chat":
        raise ValueError(f"ignore_eos is a llama-server extension of the OpenAI API; {api} has no such option")
    messages = [{"role": "user", "content": prompt}]
    if api == "ollama-chat":
        return {"model": model, "messages": messages, "stream": False, "options": {"num_predict": max_tokens}}
    if api == "ollama-generate":
        return {"model": model, "prompt": prompt, "stream": False, "options": {"num_predict": max_tokens}}
    if api == "openai-chat":
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": False}
        if ignore_eos:
            body["ignore_eos"] = True
        return body
    raise ValueError(f"unknown api {api!r}; use one of {', '.join(APIS)}")


def parse_completion(api: str, body: Any) -> Completion:
    """Token counts from a response body. Raises ValueError naming the missing field."""
    if not isinstance(body, dict):
        raise ValueError(f"{api}: the response is not a JSON object")
    if api.startswith("ollama"):
        if "eval_count" not in body:
            raise ValueError(f"{api}: the response has no 'eval_count' (is this an Ollama server?)")
        duration_ns = body.get("eval_duration")
        return Completion(
            completion_tokens=int(body["eval_count"]),
            eval_secs=float(duration_ns) / 1e9 if duration_ns else None,
            prompt_tokens=int(body["prompt_eval_count"]) if "prompt_eval_count" in body else None,
        )
    usage = body.get("usage")
    if not isinstance(usage, dict) or "completion_tokens" not in usage:
        raise ValueError(f"{api}: the response has no 'usage.completion_tokens'")
    prompt = usage.get("prompt_tokens")
    timings = body.get("timings")  # llama-server's own clock for this request
    predicted_ms = timings.get("predicted_ms") if isinstance(timings, dict) else None
    eval_secs = float(predicted_ms) / 1000 if isinstance(predicted_ms, int | float) and predicted_ms > 0 else None
    return Completion(int(usage["completion_tokens"]), eval_secs, int(prompt) if prompt is not None else None)


class HttpClient:
    """One client of one target: ``complete()`` sends a request and returns its :class:`Completion`."""

    def __init__(
        self,
        url: str,
        api: str = "ollama-chat",
        model: str = "llama3.1:8b",
        prompt: str = "Write a short paragraph about GPUs.",
        max_tokens: int = 128,
        timeout_secs: float = 300.0,
        api_key: str | None = None,
        ignore_eos: bool = False,
    ) -> None:
        import httpx

        if api not in APIS:
            raise ValueError(f"unknown api {api!r}; use one of {', '.join(APIS)}")
        self.api = api
        self.endpoint = url.rstrip("/") + _PATHS[api]
        self.body = request_body(api, model, prompt, max_tokens, ignore_eos)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_secs, headers=headers)

    def complete(self) -> Completion:
        """One request. Raises RuntimeError with the status and body for a failed request."""
        import httpx

        try:
            resp = self._client.post(self.endpoint, json=self.body)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"POST {self.endpoint} failed: {exc}") from exc
        if resp.status_code >= 400:
            raise RuntimeError(f"POST {self.endpoint} answered {resp.status_code}: {resp.text[:500]}")
        try:
            return parse_completion(self.api, resp.json())
        except ValueError as exc:
            raise RuntimeError(f"POST {self.endpoint}: {exc}") from exc

    def close(self) -> None:
        self._client.close()


class HttpWorkload:
    """A client sending requests back to back; counts generated tokens."""

    unit = "tok"

    def __init__(self, url: str, **client_args: Any) -> None:
        self.client = HttpClient(url, **client_args)

    def prepare(self) -> dict[str, Any]:
        self.client.complete()  # warm-up: the server loads the model on its first request
        return {"endpoint": self.client.endpoint, "api": self.client.api}

    def request(self) -> RequestOutcome:
        done = self.client.complete()
        extra = {"eval_secs": done.eval_secs} if done.eval_secs is not None else {}
        return RequestOutcome(float(done.completion_tokens), extra)

    def close(self) -> None:
        self.client.close()
