"""One error shape for every answer, HEAD on reads, the docs page without a network, the auth scheme."""

from __future__ import annotations

import pytest
from api_fakes import TOKEN, newsroom_source
from fastapi.testclient import TestClient

from colo.api.app import create_app
from colo.api.docs import swagger_assets_dir

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(newsroom_source(), token=TOKEN), raise_server_exceptions=False)


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "since=-1", "follow=maybe"])
def test_query_parameter_errors_are_error_shaped(client: TestClient, query: str) -> None:
    r = client.get(f"/events?{query}")
    assert r.status_code == 422
    body = r.json()
    assert set(body) <= {"error", "field"} and "detail" not in body
    assert body["error"].startswith("query.")


def test_unknown_route_and_method_are_error_shaped(client: TestClient) -> None:
    assert client.get("/nope").json() == {"error": "Not Found"}
    r = client.delete("/agents")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_apply_empty_body_is_a_documented_422(client: TestClient, body: bytes) -> None:
    r = client.post("/apply", content=body, headers=AUTH)
    assert r.status_code == 422 and "is empty" in r.json()["error"]
    responses = client.get("/openapi.json").json()["paths"]["/apply"]["post"]["responses"]
    assert "422" in responses


def test_apply_alias_bomb_fails_fast(client: TestClient) -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    r = client.post("/apply", content="\n".join(lines).encode(), headers=AUTH)
    assert r.status_code == 422 and "alias" in r.json()["error"]


def test_head_metrics_and_healthz(client: TestClient) -> None:
    for path in ("/metrics", "/healthz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b""


def test_crash_inside_a_route_is_error_shaped() -> None:
    source = newsroom_source()

    def broken() -> object:
        raise RuntimeError("boom")

    source.snapshot = broken  # type: ignore[method-assign]
    r = TestClient(create_app(source, token=TOKEN), raise_server_exceptions=False).get("/agents")
    assert r.status_code == 500 and "internal error" in r.json()["error"]


def test_docs_page_needs_no_network(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "http://" not in page and "https://" not in page.replace(
        "https://swagger.io", ""
    )
    if swagger_assets_dir() is not None:
        assert "/docs/assets/swagger-ui-bundle.js" in page
        js = client.get("/docs/assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs/assets/../../etc/passwd").status_code == 404


def test_openapi_names_the_bearer_scheme(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "the token in <state_dir>/api-token (or $COLO_API_TOKEN)",
    }
    assert doc["paths"]["/apply"]["post"]["security"] == [{"bearerAuth": []}]
    assert {"bearerAuth": []} in doc["paths"]["/agents"]["get"]["security"]
    assert "HTTPValidationError" not in str(doc)
