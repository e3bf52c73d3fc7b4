"""The documentation pages work without internet: ``/api/docs`` (the whole platform) and every
service's ``/schema`` page load Swagger UI from the app itself (the pinned ``swagger-ui-bundle``
package), and name no address outside the platform."""

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from swagger_ui_bundle import swagger_ui_path

from airtable_gateway.app import create_app as create_airtable_app
from airtable_gateway.config import AirtableSettings
from analytics_service.app import create_app as create_analytics_app
from analytics_service.config import AnalyticsSettings
from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from shared import migrations
from shared.events import InMemoryBus
from shared.settings import ServiceSettings, load_settings
from shared.stores import MemoryStore
from shared.usage import InMemoryUsageChannel
from tests.conftest import app_client
from user_service.app import create_app as create_user_app
from user_service.config import UserSettings

SERVICES: dict[str, tuple[str, type[ServiceSettings], Any]] = {
    "/api/v1/auth": ("auth_service", AuthSettings, create_auth_app),
    "/api/v1/users": ("user_service", UserSettings, create_user_app),
    "/api/v1/airtable": ("airtable_gateway", AirtableSettings, create_airtable_app),
    "/api/v1/analytics": ("analytics_service", AnalyticsSettings, create_analytics_app),
}
CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}
ANY_URL = re.compile(r"""https?://[^\s"'<>)]+""")


class AssetReferences(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.references += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """Embedded defaults in a temporary DATA_DIR, every service's SQLite file migrated."""
    environ = {"DATA_DIR": str(tmp_path), "JWT_SECRET": "docs-offline-test-secret-" + "d" * 40, "REDIS_URL": ""}
    for package, settings_class, _ in SERVICES.values():
        migrations.upgrade(load_settings(settings_class, environ), package)
    return environ


@pytest.fixture
async def platform(environ: dict[str, str]) -> Any:
    """The gateway with every service in-process on SQLite and in-memory stores (no network)."""
    store, bus, usage = MemoryStore(), InMemoryBus(), InMemoryUsageChannel()
    services: dict[str, Litestar] = {}
    for prefix, (_, settings_class, factory) in SERVICES.items():
        settings = load_settings(settings_class, environ)
        extra = {"usage": usage} if "analytics" in prefix else {}
        services[prefix] = factory(settings, store=store, bus=bus, **extra)
    gateway = create_gateway_app(
        load_settings(GatewaySettings, environ), services=services, store=store, bus=bus, usage=usage
    )
    async with app_client(gateway):
        yield gateway, services


async def fetch_page_and_assets(app: Litestar, page_path: str) -> tuple[str, list[str]]:
    """The page and what it references; each reference fetched from ``app`` itself and checked."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://platform") as client:
        page = await client.get(page_path)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        parser = AssetReferences()
        parser.feed(page.text)
        assert parser.references, f"{page_path} references no asset"
        for reference in parser.references:
            assert reference.startswith("/"), f"{page_path} loads {reference} from elsewhere"
            asset = await client.get(reference)
            assert asset.status_code == 200, f"{page_path}: {reference} → {asset.status_code}"
            suffix = Path(reference).suffix
            assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), (reference, asset.headers)
            assert asset.content == (Path(swagger_ui_path) / Path(reference).name).read_bytes(), reference
    return page.text, parser.references


async def test_the_platform_docs_page_loads_swagger_ui_from_the_gateway(platform: Any) -> None:
    gateway, _ = platform
    page, references = await fetch_page_and_assets(gateway, "/api/docs")

    assert ANY_URL.findall(page) == [], "the page names an address outside the platform"
    assert {Path(reference).name for reference in references} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    assert '"/api/v1/openapi.json"' in page
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://platform") as client:
        document = await client.get("/api/v1/openapi.json")
    assert document.status_code == 200 and document.json()["x-unavailable"] == []


@pytest.mark.parametrize("prefix", [None, *SERVICES])
async def test_each_service_docs_page_loads_swagger_ui_from_the_service(platform: Any, prefix: str | None) -> None:
    gateway, services = platform
    app = gateway if prefix is None else services[prefix]
    for page_path in ("/schema", "/schema/swagger"):
        page, references = await fetch_page_and_assets(app, page_path)
        script_and_links = [reference for reference in references if not reference.startswith("/schema/assets/")]
        assert script_and_links == [], f"{page_path} loads {script_and_links} from outside the pinned package"
        external = [url for url in ANY_URL.findall(page) if not url.startswith("http://platform")]
        assert external == [], f"{page_path} names {external}"


async def test_an_unknown_asset_is_a_404_problem_and_no_file_outside_the_package_is_served(platform: Any) -> None:
    gateway, _ = platform
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://platform") as client:
        missing = await client.get("/schema/assets/no-such-file.js")
        escape = await client.get("/schema/assets/..%2f..%2f..%2fpyproject.toml")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert escape.status_code == 404
    assert "dependencies" not in escape.text
