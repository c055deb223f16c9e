"""``/docs``: the interactive API page, served with no network (no CDN).

Swagger UI's script and stylesheet come from the ``swagger-ui-bundle`` package (a dependency of colo) and are
served under ``/docs/assets/``. Should that package be missing, ``/docs`` is a small self-contained page that
lists every route and links the OpenAPI document instead of a blank page.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def swagger_assets_dir() -> Path | None:
    """The directory of the vendored Swagger UI files, or None when the package is not installed."""
    try:
        import swagger_ui_bundle  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(str(swagger_ui_bundle.swagger_ui_path))
    return path if all((path / name).is_file() for name in ASSETS) else None


def _fallback_page(app: FastAPI) -> str:
    rows = []
    for path, methods in app.openapi().get("paths", {}).items():
        for method, op in methods.items():
            summary = html.escape(str(op.get("summary", "")))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{summary}</td></tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>colo API</title></head><body>"
        f"<h1>{html.escape(app.title)} API {html.escape(app.version)}</h1>"
        "<p>The OpenAPI document: <a href='/openapi.json'>/openapi.json</a>. "
        "(Install <code>swagger-ui-bundle</code> for the interactive page.)</p>"
        f"<table>{''.join(rows)}</table></body></html>"
    )


def install_docs(app: FastAPI, assets: Path | None = None) -> None:
    """Add ``GET /docs`` and ``GET /docs/assets/{name}`` to ``app`` (no token needed, nothing external)."""
    where = assets if assets is not None else swagger_assets_dir()

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if where is None:
            return HTMLResponse(_fallback_page(app))
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if where is None or name not in ASSETS:
            raise HTTPException(status_code=404, detail={"error": f"no docs asset {name!r}"})
        return FileResponse(where / name, media_type=ASSETS[name])
