"""Which of the agent's models answers a route: embeddings, classification or generation.

A route fits a model by what the model answers (``AgentRuntime.output_kind``, seen at warm-up): mean-pooled
``embeddings`` (``/v1/embeddings``, ``/embed``), ``classification`` (``/predict``), ``generation``
(``/v1/completions``, ``/v1/chat/completions``). :func:`fitting_model` names the route and the model's kind
when they do not fit (RouteMismatch: a 404 in the route's error shape); :func:`fitting_routes` says which
routes an agent's OpenAPI document lists.
"""

from __future__ import annotations

from colo.modelserver.api_errors import RouteMismatch
from colo.modelserver.loading import LoadedModel
from colo.modelserver.runtime import AgentRuntime

# route -> the output kind it serves
ROUTE_KINDS = {
    "/v1/embeddings": "embeddings",
    "/embed": "embeddings",
    "/predict": "classification",
    "/v1/completions": "generation",
    "/v1/chat/completions": "generation",
}


def fitting_model(runtime: AgentRuntime, model_id: str | None, kind: str, route: str) -> LoadedModel:
    """The model ``model_id`` (None: the agent's first model answering ``kind``) when it answers ``kind``.

    Raises NotReady/ContextLost/UnknownModel (from the runtime) or RouteMismatch naming what fits instead.
    """
    if model_id is None:
        runtime.model(None)  # NotReady / ContextLost first
        for candidate in runtime.models:
            if runtime.output_kind(candidate) == kind:
                return runtime.models[candidate]
        raise RouteMismatch(
            f"no model of agent {runtime.agent} answers {route} ({_served(runtime)})",
            hint="send this request to an agent serving such a model",
        )
    model = runtime.model(model_id)
    have = runtime.output_kind(model.model_id)
    if have != kind:
        raise RouteMismatch(
            f"model {model.model_id!r} answers {have or model.task}, not {kind}: {route} does not fit it "
            f"({_served(runtime)})",
            hint="use the route that fits the model (embeddings: /v1/embeddings or /embed; classification: "
            "/predict; generation: /v1/completions or /v1/chat/completions; any: /infer)",
        )
    return model


def fitting_routes(runtime: AgentRuntime) -> set[str]:
    """The routes of :data:`ROUTE_KINDS` that at least one loaded model answers."""
    kinds = {runtime.output_kind(m) for m in runtime.models}
    return {route for route, kind in ROUTE_KINDS.items() if kind in kinds}


def _served(runtime: AgentRuntime) -> str:
    return "models: " + ", ".join(f"{m} ({runtime.output_kind(m) or 'unknown'})" for m in runtime.models)
