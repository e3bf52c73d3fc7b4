"""One OpenAPI document for the whole platform, merged from the services' own (cached)."""

import asyncio
import logging
import time
from typing import Any

from gateway.proxy import Forward
from shared.docs import FAVICON_LINK, SWAGGER_UI_CSS, SWAGGER_UI_JS

logger = logging.getLogger("gateway.openapi")

DOCS_HTML = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>PyAirtable platform API</title>
{FAVICON_LINK}
<link rel="stylesheet" href="{SWAGGER_UI_CSS}"></head>
<body><div id="docs"></div>
<script src="{SWAGGER_UI_JS}"></script>
<script>SwaggerUIBundle({{url: "/api/v1/openapi.json", dom_id: "#docs", validatorUrl: null}});</script>
</body></html>"""


class OpenAPIAggregator:
    def __init__(self, upstreams: dict[str, Forward], cache_seconds: float) -> None:
        self.upstreams = upstreams
        self.cache_seconds = cache_seconds
        self._document: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def document(self) -> dict[str, Any]:
        async with self._lock:
            if self._document is None or time.monotonic() - self._fetched_at > self.cache_seconds:
                self._document = await self._build()
                self._fetched_at = time.monotonic()
            return self._document

    async def _build(self) -> dict[str, Any]:
        prefixes = list(self.upstreams)
        fetched = await asyncio.gather(*(self._fetch(p) for p in prefixes), return_exceptions=True)
        merged: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": "PyAirtable platform", "version": "1", "description": "Every service behind /api/v1."},
            "paths": {},
            "components": {"schemas": {}, "securitySchemes": {}},
            "tags": [],
            "x-unavailable": [],
        }
        for prefix, document in zip(prefixes, fetched, strict=True):
            if isinstance(document, BaseException) or not isinstance(document, dict):
                merged["x-unavailable"].append(prefix)
                continue
            merge_document(merged, document, prefix)
        return merged

    async def _fetch(self, prefix: str) -> dict[str, Any]:
        document: dict[str, Any] = await self.upstreams[prefix].get_json("/schema/openapi.json")
        return document


def merge_document(merged: dict[str, Any], document: dict[str, Any], prefix: str) -> None:
    """Add the paths a service serves under ``prefix`` and the components they use."""
    for path, item in document.get("paths", {}).items():
        if path == prefix or path.startswith(prefix + "/"):
            merged["paths"][path] = item
    components = document.get("components", {})
    for kind in ("schemas", "securitySchemes"):
        for name, schema in components.get(kind, {}).items():
            existing = merged["components"][kind].setdefault(name, schema)
            if existing != schema:
                logger.warning("openapi component differs between services", extra={"component": name})
    known = {tag["name"] for tag in merged["tags"]}
    merged["tags"] += [tag for tag in document.get("tags", []) if tag.get("name") not in known]
