"""schemathesis against the agent's own OpenAPI document, once per kind of agent (an embedder, a classifier, a
generator; tiny random-weight models on the CPU): no 500, every answer as declared (status, content type,
schema, headers), schema-valid bodies accepted and schema-invalid ones refused.

One model per agent, so the document's limits are that model's exactly (with several models they are the
largest of them, and a request to a smaller one may be refused: see colo.modelserver.openapi_doc).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from modelserver_fakes import tiny_loader

from colo.modelserver.app import create_app
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec


def _agent(kind: str, **spec: int) -> schemathesis.specs.openapi.schemas.BaseOpenAPISchema:
    runtime = AgentRuntime(
        agent=f"fuzz-{kind}",
        specs=[("m", ModelSpec(batch_size=3, max_seq_len=12, **spec))],
        device="cpu",
        loader=tiny_loader({"m": kind}, words=True),
        max_queue=8,
    )
    runtime.load()
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime))


embedder = _agent("bert")
classifier = _agent("bert-cls")
generator = _agent("gpt2", new_tokens=2)

_SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _check(case: schemathesis.Case) -> None:
    response = case.call(timeout=20)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    case.validate_response(response)


@embedder.parametrize()
@_SETTINGS
def test_embedder(case: schemathesis.Case) -> None:
    _check(case)


@classifier.parametrize()
@_SETTINGS
def test_classifier(case: schemathesis.Case) -> None:
    _check(case)


@generator.parametrize()
@_SETTINGS
def test_generator(case: schemathesis.Case) -> None:
    _check(case)
