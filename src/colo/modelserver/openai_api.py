"""OpenAI's routes on the built-in agent: ``/v1/models``, ``/v1/embeddings``, ``/v1/completions``,
``/v1/chat/completions`` — what the ``openai`` package, LangChain and LlamaIndex speak.

- ``/v1/embeddings`` for encoders that answer embeddings (mean-pooled hidden states): ``input`` a string, a
  list of strings, a token array or a list of token arrays; ``encoding_format`` ``float`` or ``base64``
  (the little-endian float32 bytes, as OpenAI sends them; the ``openai`` client asks for base64 by default);
  ``usage.prompt_tokens`` counts the ids after tokenisation and truncation to the model's ``max_seq_len``.
- ``/v1/completions`` and ``/v1/chat/completions`` for generators and seq2seq models: greedy and
  non-streaming (``stream: true`` is refused, 400); ``max_tokens`` (chat: also ``max_completion_tokens``) is
  bounded by the model's ``new_tokens`` (default: ``new_tokens``). A chat becomes one prompt through the
  tokenizer's chat template, else ``role: content`` lines ending in ``assistant:``. When the tokenizer cannot
  decode (the hash fallback of a random-weight model), the text is the ids as ``<id>`` tokens.
- A model that does not answer a route (an encoder asked for completions) is a 404 with code
  ``model_not_supported``; an unknown model a 404 ``model_not_found``; bad bodies 400 — all in OpenAI's error
  shape (:mod:`colo.modelserver.api_errors`).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from colo.modelserver.api_errors import HANDLED, Dialect, error_from, error_responses
from colo.modelserver.bodies import ChatBody, CompletionsBody, EmbeddingsBody
from colo.modelserver.fast_bodies import FastRoutes
from colo.modelserver.http_common import infer, inline_sized, parse_secs, respond, respond_async
from colo.modelserver.route_fit import fitting_model
from colo.modelserver.runtime import AgentRuntime, InferInput, RequestError
from colo.modelserver.tokens import chat_prompt

_ERRORS = error_responses(Dialect.OPENAI, 400, 404, 503, 507)


def split_input(value: str | list[str] | list[int] | list[list[int]]) -> tuple[list[str] | None, list[list[int]] | None]:
    """OpenAI's ``input`` as (texts, None) or (None, rows of ids)."""
    if isinstance(value, str):
        return [value], None
    if value and isinstance(value[0], str):
        return [str(v) for v in value], None
    if value and isinstance(value[0], int):
        return None, [[int(v) for v in value]]
    return None, [[int(i) for i in row] for row in value]  # type: ignore[union-attr]


def _text(ids: Sequence[int], decoded: str | None) -> str:
    """The decoded text, or the ids as ``<id>`` tokens when the tokenizer cannot decode."""
    if decoded is not None:
        return decoded
    return "".join(f"<{i}>" for i in ids)


def _completion_doc(
    id_prefix: str, object_name: str, model_id: str, choices: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    """An OpenAI completion answer (``text_completion`` or ``chat.completion``): a fresh id, now, the choices."""
    return {
        "id": f"{id_prefix}-{uuid.uuid4().hex}",
        "object": object_name,
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        "usage": usage,
    }


def add_openai_routes(app: FastAPI, runtime: AgentRuntime, fast: FastRoutes | None = None) -> None:
    """Add the ``/v1/...`` routes for ``runtime`` to ``app``; ``/v1/embeddings`` also to ``fast`` (the routes
    :class:`~colo.modelserver.fast_bodies.FastBodies` answers)."""
    clock, metrics = runtime.clock, runtime.metrics
    fast = fast or FastRoutes()

    def failed(exc: Exception) -> Response:
        return error_from(Dialect.OPENAI, exc, runtime.retry_after_secs)

    @app.get("/v1/models", tags=["openai"])
    def models() -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "colo"} for m, _ in runtime.specs]
        return respond({"object": "list", "data": data}, metrics, clock)

    @fast.post(app, "/v1/embeddings", EmbeddingsBody, tags=["openai"], responses=_ERRORS)
    async def embeddings(body: EmbeddingsBody, request: Request) -> Response:
        parsed = parse_secs(request, clock)
        texts, ids = split_input(body.input)
        req = InferInput(model=body.model, texts=texts, input_ids=ids, raw=True, parse_secs=parsed)
        try:
            model = fitting_model(runtime, body.model, "embeddings", "/v1/embeddings")
            answer = await infer(runtime, replace(req, model=model.model_id))
            vectors = answer["vectors"]
            if body.dimensions is not None and body.dimensions != vectors.shape[1]:
                raise RequestError(
                    f"dimensions {body.dimensions}: {model.model_id} gives {vectors.shape[1]}-dimensional "
                    "embeddings and cannot shorten them (leave dimensions out)"
                )
        except HANDLED as exc:
            return failed(exc)
        if body.encoding_format == "base64":
            rows: list[Any] = [
                base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode("ascii") for v in vectors
            ]
        else:
            rows = list(vectors)
        tokens = answer["input_tokens"]
        doc = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
            "model": model.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await respond_async(doc, metrics, clock, inline=inline_sized(req))

    def generate(
        model_name: str, route: str, prompts: list[str], max_tokens: int | None, parsed: float | None
    ) -> tuple[str, list[tuple[str, str]], dict[str, int]] | Response:
        """(model id, [(text, finish_reason)], usage) for ``prompts``, or the error response."""
        try:
            model = fitting_model(runtime, model_name, "generation", route)
            answer = runtime.infer(
                InferInput(model=model.model_id, texts=prompts, max_new_tokens=max_tokens, parse_secs=parsed)
            )
        except HANDLED as exc:
            return failed(exc)
        wanted = max_tokens if max_tokens is not None else model.limits.new_tokens
        decoded: list[str | None] = answer.get("texts") or [None] * len(answer["generated_ids"])
        choices = [
            (_text(ids, text), "length" if len(ids) >= wanted else "stop")
            for ids, text in zip(answer["generated_ids"], decoded, strict=True)
        ]
        completion = int(answer["generated_tokens"])
        prompt = int(answer["input_tokens"])
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return model.model_id, choices, usage

    @app.post("/v1/completions", tags=["openai"], responses=_ERRORS)
    def completions(body: CompletionsBody, request: Request) -> Response:
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        out = generate(body.model, "/v1/completions", prompts, body.max_tokens, parse_secs(request, clock))
        if isinstance(out, Response):
            return out
        model_id, choices, usage = out
        choice_docs = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, (text, finish) in enumerate(choices)
        ]
        return respond(_completion_doc("cmpl", "text_completion", model_id, choice_docs, usage), metrics, clock)

    @app.post("/v1/chat/completions", tags=["openai"], responses=_ERRORS)
    def chat(body: ChatBody, request: Request) -> Response:
        parsed = parse_secs(request, clock)
        try:
            model = fitting_model(runtime, body.model, "generation", "/v1/chat/completions")
        except HANDLED as exc:
            return failed(exc)
        prompt = chat_prompt(model.tokenizer, [(m.role, m.content) for m in body.messages])
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        out = generate(body.model, "/v1/chat/completions", [prompt], limit, parsed)
        if isinstance(out, Response):
            return out
        model_id, choices, usage = out
        choice_docs = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for i, (text, finish) in enumerate(choices)
        ]
        return respond(_completion_doc("chatcmpl", "chat.completion", model_id, choice_docs, usage), metrics, clock)
