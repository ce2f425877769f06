"""`/docs`: Swagger UI served from this server, so that it works offline.

FastAPI's own `/docs` page loads Swagger UI's JavaScript and CSS from a CDN and stays blank without
network. The assets come instead from the PyPI package `fastapi-offline` (part of the serve extra), which
ships Swagger UI 5; we only read its static files. (`swagger-ui-bundle` ships Swagger UI 4, which cannot
render the OpenAPI 3.1 documents FastAPI writes.)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = "/docs-assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def swagger_assets_dir() -> Path:
    """The directory holding Swagger UI's files; a clear error when the package is missing."""
    try:
        directory = Path(str(resources.files("fastapi_offline").joinpath("static")))
    except ModuleNotFoundError:
        raise ImportError(
            "/docs needs Swagger UI's files from the package fastapi-offline: pip install 'realm-lm[serve]'"
        ) from None
    missing = [name for name in ASSET_FILES if not (directory / name).is_file()]
    if missing:
        raise ImportError(
            f"{directory} lacks {', '.join(missing)}; reinstall it: pip install --force-reinstall fastapi-offline"
        )
    return directory


def add_offline_docs(app: FastAPI) -> None:
    """Add `GET /docs` (Swagger UI over `app.openapi_url`) and its assets under `/docs-assets/`.

    The app must have been created with `docs_url=None` (and `redoc_url=None`)."""
    app.mount(ASSETS_URL, StaticFiles(directory=swagger_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )
