"""HTTP JSON API and web page over a `Pipeline` (optional extra: `pip install 'realm-lm[serve]'`).

    from realm.serve import ServeConfig, run_server

    run_server(pipeline, ServeConfig(port=8000, credit="Text: Wikipedia (CC BY-SA 4.0)"))

Endpoints: `POST /ask`, `POST /search`, `GET /health`, `POST /reload` (with `allow_reload`), the page at
`/`, OpenAPI at `/openapi.json` and Swagger UI at `/docs` (its assets served from here: works offline).
Concurrent requests are micro-batched (`realm.serve.batching`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from realm.serve.config import ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from realm.pipeline import Pipeline

__all__ = ["ServeConfig", "create_app", "run_server"]


def _app_module():
    try:
        from realm.serve import app
    except ImportError as err:
        raise ImportError(
            f"serving needs fastapi and uvicorn: pip install 'realm-lm[serve]' ({err})"
        ) from err
    return app


def create_app(
    pipeline_or_loader: Pipeline | Callable[[], Pipeline], config: ServeConfig | None = None
) -> FastAPI:
    """The FastAPI app (see `realm.serve.app.create_app`)."""
    return _app_module().create_app(pipeline_or_loader, config)


def run_server(pipeline: Pipeline | Callable[[], Pipeline], config: ServeConfig | None = None) -> None:
    """Serve with uvicorn until interrupted (blocking; see `realm.serve.app.run_server`)."""
    _app_module().run_server(pipeline, config)
