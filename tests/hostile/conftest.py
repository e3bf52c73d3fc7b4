"""The platform for the hostile-input suite: every service in-process on its own migrated
PostgreSQL database (PostgreSQL is where the NUL character and out-of-range values bite), the
Airtable emulator behind the Airtable gateway, and the gateway in front of them all.

Requests go to each service directly and through the gateway; every one carries a new admin
token (a sign-out cannot end the next request's) and comes from one of 250 addresses in turn, so
per-address throttles do not answer in place of the validation under test.
"""

import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from shared import migrations
from shared.events import InMemoryBus
from shared.registry import SERVICES
from shared.settings import load_settings
from shared.stores import MemoryStore
from shared.usage import InMemoryUsageChannel
from tests.conftest import LOADED_DATABASE_ENVIRON, DatabaseFactory, app_client, signed_access_token
from tests.hostile.requests import Hostile

JWT_SECRET = "hostile-input-suite-secret-" + "h" * 40
API_KEY = "hostile-input-suite-api-key-" + "k" * 20
PROBLEM = "application/problem+json"
ADDRESSES = [f"127.0.{block}.{host}" for block in (1, 2) for host in range(1, 126)]


@pytest.fixture(scope="session")
def hostile_databases(databases: DatabaseFactory) -> dict[str, str]:
    """A migrated database per service (once per run)."""
    urls = {}
    for entry in SERVICES:
        url = databases.create(f"hostile_{entry.package}")
        migrations.upgrade(entry.settings()(database_url=url), entry.package)
        urls[entry.prefix] = url
    return urls


@pytest.fixture
def environ(hostile_databases: dict[str, str], tmp_path: Path) -> dict[str, str]:
    values = {
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": JWT_SECRET,
        "API_KEY": API_KEY,
        # Cheap hashes; limits high enough that no throttle answers before validation does.
        "ARGON2_MEMORY_KIB": "19456",
        "ARGON2_TIME_COST": "2",
        "ARGON2_PARALLELISM": "1",
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_BURST": "100000",
        "AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        "AUTH_RATE_LIMIT_BURST": "100000",
        "IP_ATTEMPTS_PER_MINUTE": "1000000",
        # A burst of 25 needs new pooled connections at once (tests/conftest.py says why this long).
        **LOADED_DATABASE_ENVIRON,
    }
    for entry in SERVICES:
        values[f"{entry.env_prefix}_DATABASE_URL"] = hostile_databases[entry.prefix]
    return values


@dataclass
class Platform:
    gateway: Litestar
    services: dict[str, Litestar]


@pytest.fixture
async def platform(environ: dict[str, str]) -> AsyncIterator[Platform]:
    """The gateway with every service in-process; its lifespan starts theirs."""
    store, bus, usage = MemoryStore(), InMemoryBus(), InMemoryUsageChannel()
    services = {}
    for entry in SERVICES:
        extra = {"airtable_emulator": True} if entry.package == "airtable_gateway" else {}
        settings = load_settings(entry.settings(), environ, **extra)
        parts = {"usage": usage} if entry.package == "analytics_service" else {}
        services[entry.prefix] = entry.app_factory()(settings, store=store, bus=bus, **parts)
    gateway = create_gateway_app(
        load_settings(GatewaySettings, environ), services=services, store=store, bus=bus, usage=usage
    )
    async with app_client(gateway):
        yield Platform(gateway=gateway, services=services)


def admin_token() -> str:
    """A new admin's access token, as the auth service signs them."""
    return signed_access_token(
        JWT_SECRET, email="hostile-admin@example.com", roles=["user", "admin"], tid=str(uuid.uuid4())
    )


@dataclass
class Outcome:
    """What the suite sent (by kind) and every answer that broke the rule."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    not_problems: list[str] = field(default_factory=list)

    def failures(self) -> str:
        parts = [
            ("5xx", self.server_errors),
            ("accepted but must be refused", self.accepted),
            ("a 4xx that is not problem+json", self.not_problems),
        ]
        return "\n".join(f"{title}:\n  " + "\n  ".join(items[:40]) for title, items in parts if items)


async def send_all(app: Litestar, requests: list[Hostile], headers: dict[str, str] | None = None) -> Outcome:
    """Send every request to ``app`` (lifespan already running) and judge each answer."""
    outcome = Outcome()
    addresses = itertools.cycle(ADDRESSES)
    clients = {
        address: httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(address, 50000)), base_url="http://testserver", timeout=30
        )
        for address in ADDRESSES
    }
    try:
        for hostile in requests:
            outcome.sent[hostile.kind] += 1
            sent_headers = {"authorization": f"Bearer {admin_token()}", **(headers or {})}
            if hostile.body is not None:
                sent_headers["content-type"] = "application/json"
            response = await clients[next(addresses)].request(
                hostile.method, hostile.target(), content=hostile.body, headers=sent_headers
            )
            judge(outcome, hostile, response)
    finally:
        for client in clients.values():
            await client.aclose()
    return outcome


def judge(outcome: Outcome, hostile: Hostile, response: httpx.Response) -> None:
    status, media_type = response.status_code, response.headers.get("content-type", "")
    what = f"{hostile.label()} -> {status} {response.text[:160]}"
    outcome.statuses[hostile.kind, status] += 1
    if status >= 500:
        outcome.server_errors.append(what)
    elif hostile.must_refuse and status < 400:
        outcome.accepted.append(what)
    elif status >= 400 and not media_type.startswith(PROBLEM):
        outcome.not_problems.append(what)
