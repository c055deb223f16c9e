"""``POST /apply``'s OpenAPI body says what the route accepts: non-blank YAML or text, or colo.yaml's own
JSON Schema as JSON; an empty body is outside the schema and refused."""

from __future__ import annotations

import re

import pytest
from api_fakes import TOKEN, newsroom_source
from fastapi.testclient import TestClient

from colo.api.app import create_app
from colo.spec import ColoConfig

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(newsroom_source(), token=TOKEN))


def body_schema(client: TestClient) -> tuple[dict[str, object], dict[str, object]]:
    doc = client.get("/openapi.json").json()
    return doc["paths"]["/apply"]["post"]["requestBody"], doc["components"]["schemas"]


def test_text_bodies_must_not_be_blank(client: TestClient) -> None:
    body, _ = body_schema(client)
    assert body["required"] is True
    content = body["content"]
    assert isinstance(content, dict) and set(content) == {"application/yaml", "application/json", "text/plain"}
    for kind in ("application/yaml", "text/plain"):
        text = content[kind]["schema"]
        assert text["type"] == "string" and text["minLength"] == 1
        pattern = re.compile(text["pattern"])
        assert not pattern.search("") and not pattern.search(" \n\t") and pattern.search("agents: {}")
    for blank in ("", "  \n"):
        r = client.post("/apply", content=blank, headers={**AUTH, "Content-Type": "application/yaml"})
        assert r.status_code == 422 and "is empty" in r.json()["error"]


def test_json_body_is_colo_yaml_s_schema(client: TestClient) -> None:
    body, schemas = body_schema(client)
    content = body["content"]
    assert isinstance(content, dict)
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ColoConfig"}
    config = schemas["ColoConfig"]
    assert isinstance(config, dict) and config["required"] == ["models", "agents"]
    assert config["additionalProperties"] is False
    # every reference inside resolves to a component of the document
    own = ColoConfig.model_json_schema(by_alias=True, mode="validation")
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(schemas).replace("'", '"')))
    assert refs <= set(schemas) and set(own.get("$defs", {})) <= set(schemas)
    assert set(config["properties"]) == set(own["properties"])  # type: ignore[index]


def test_an_empty_json_object_is_outside_the_schema_and_refused(client: TestClient) -> None:
    _, schemas = body_schema(client)
    config = schemas["ColoConfig"]
    assert isinstance(config, dict) and config["required"]  # {} lacks models and agents: not schema-valid
    assert client.post("/apply", json={}, headers=AUTH).status_code == 422
