"""The API documentation, offline: /docs (Swagger UI) and /redoc (ReDoc) with their scripts and
styles served by the app itself from the pinned fastapi-offline package (no CDN)."""

from __future__ import annotations

import base64
import functools
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from mnist_cnn.serve.icon import favicon_png

# Swagger UI 5 and ReDoc 2, as files of the pinned fastapi-offline package: the docs need no CDN.
DOCS_ASSETS = resources.files("fastapi_offline") / "static"
DOCS_STATIC_URL = "/static/docs"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # ReDoc's "API docs by Redocly" link fetches it.


def add_documentation(app: FastAPI) -> None:
    """/docs and /redoc, and the files they load."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: API documentation",
            swagger_js_url=f"{root}{DOCS_STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.ico",
            # No online validator badge: it would send the schema's address to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(f"{DOCS_STATIC_URL}/redoc.js", include_in_schema=False)
    def redoc_js() -> Response:
        return Response(redoc_script(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: API documentation",
            redoc_js_url=f"{root}{DOCS_STATIC_URL}/redoc.js",
            redoc_favicon_url=f"{root}/favicon.ico",
            with_google_fonts=False,
        )

    # After the routes above: the mount would otherwise answer for redoc.js too.
    app.mount(DOCS_STATIC_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")


@functools.cache
def redoc_script() -> bytes:
    """ReDoc's script with its one outside address, a logo, replaced by the app's own icon."""
    script = (DOCS_ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
    icon = "data:image/png;base64," + base64.b64encode(favicon_png()).decode("ascii")
    return script.replace(REDOC_LOGO, icon).encode("utf-8")
