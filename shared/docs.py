"""Interactive API documentation that works offline.

Swagger UI comes from a pinned Python package (``swagger-ui-bundle``, see pyproject.toml) and every
app serves its files itself under ``/schema/assets``, so neither a service's ``/schema`` page nor
the gateway's ``/api/docs`` loads anything from a CDN: they work on a machine without internet,
and the version shown is the one that was installed, not a floating one.
"""

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

DOCS_ASSETS_PATH = "/schema/assets"
SWAGGER_UI_JS = f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js"
SWAGGER_UI_PRESET_JS = f"{DOCS_ASSETS_PATH}/swagger-ui-standalone-preset.js"
SWAGGER_UI_CSS = f"{DOCS_ASSETS_PATH}/swagger-ui.css"
FAVICON = f"{DOCS_ASSETS_PATH}/favicon-32x32.png"
FAVICON_LINK = f'<link rel="icon" type="image/png" href="{FAVICON}">'


def docs_assets_router() -> Router:
    """The Swagger UI files, public like the rest of ``/schema`` (the assets change only with the package)."""
    return create_static_files_router(
        path=DOCS_ASSETS_PATH,
        directories=[swagger_ui_path],
        name="docs_assets",
        cache_control=CacheControlHeader(max_age=86400, public=True),
        opt={"exclude_from_auth": True},
    )


def swagger_render_plugin() -> SwaggerRenderPlugin:
    """Swagger UI at ``/schema`` and ``/schema/swagger``, its assets from :func:`docs_assets_router`
    (Litestar's own default loads them, and its favicon, from a CDN)."""
    return SwaggerRenderPlugin(
        js_url=SWAGGER_UI_JS,
        css_url=SWAGGER_UI_CSS,
        standalone_preset_js_url=SWAGGER_UI_PRESET_JS,
        path=["/", "/swagger"],
        favicon=FAVICON_LINK,
    )
