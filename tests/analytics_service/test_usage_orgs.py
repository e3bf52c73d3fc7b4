"""Usage per organisation, per member and per API key: from the gateway's usage records (which
carry the caller's active organisation and the key) and the members' LLM usage events."""

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from litestar import Litestar
from redis.asyncio import Redis

from analytics_service.workers import apply_usage
from shared.streams import append
from shared.usage import UsageMessage, UsageRecord, usage_stream
from tests.analytics_service.conftest import API, User
from tests.conftest import app_client, assert_problem, eventually

AIRTABLE, USERS = "/api/v1/airtable", "/api/v1/users"
ORG, OTHER_ORG = str(uuid.uuid4()), str(uuid.uuid4())


def member(role: str, org: str = ORG) -> User:
    return User("user", tid=org, org_role=role)


def request(
    user: User, route: str = USERS, status: int = 200, org: str | None = ORG, key: str | None = None
) -> UsageRecord:
    return UsageRecord(user.id, "GET", route, status, 10.0, 50, 0, uuid.uuid4().hex, time.time(), org, key)


async def deliver(app: Litestar, records: list[UsageRecord]) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await apply_usage(session, [UsageMessage(uuid.uuid4().hex, records)], datetime.now(UTC))


def org_url(org: str) -> str:
    return f"{API}/usage/orgs/{org}"


async def test_an_organisations_usage_totals_per_route_and_per_member(
    client: httpx.AsyncClient, analytics_app: Litestar
) -> None:
    owner, worker = member("owner"), member("member")
    outsider = member("owner", OTHER_ORG)
    await deliver(
        analytics_app,
        [
            request(owner),
            request(owner, AIRTABLE),
            request(worker, AIRTABLE),
            request(worker, AIRTABLE, status=503),
            request(worker, AIRTABLE, org=None),  # made while no organisation was active
            request(outsider, AIRTABLE, org=OTHER_ORG),
        ],
    )
    llm = {"event_type": "llm_usage", "properties": {"model": "m", "prompt_tokens": 7, "cost_usd": 0.5}}
    assert (await client.post(f"{API}/events", json=llm, headers=worker.headers)).status_code == 202

    response = await client.get(org_url(ORG), params={"days": 1}, headers=owner.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["organization_id"] == ORG
    assert body["totals"] == {"api_calls": 4, "airtable_calls": 3, "errors": 1, "tokens_used": 7, "cost_usd": 0.5}
    assert body["by_route"] == [
        {"route": AIRTABLE, "api_calls": 3, "errors": 1, "tokens_used": 0, "cost_usd": 0.0},
        {"route": USERS, "api_calls": 1, "errors": 0, "tokens_used": 0, "cost_usd": 0.0},
    ]

    response = await client.get(f"{org_url(ORG)}/members", params={"days": 1}, headers=owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["members"] == [
        {"user_id": worker.id, "api_calls": 2, "airtable_calls": 2, "errors": 1, "tokens_used": 7, "cost_usd": 0.5},
        {"user_id": owner.id, "api_calls": 2, "airtable_calls": 1, "errors": 0, "tokens_used": 0, "cost_usd": 0.0},
    ]


async def test_who_may_see_an_organisations_usage(client: httpx.AsyncClient, analytics_app: Litestar) -> None:
    await deliver(analytics_app, [request(member("member"))])
    for caller in (member("owner"), member("admin"), User("admin", "user")):
        for path in (org_url(ORG), f"{org_url(ORG)}/members"):
            response = await client.get(path, headers=caller.headers)
            assert response.status_code == 200, (path, response.text)
            assert response.json()["organization_id"] == ORG
    for path in (org_url(ORG), f"{org_url(ORG)}/members"):
        # Its members and viewers: 403; another organisation's owner, or a user in none: 404.
        assert_problem(await client.get(path, headers=member("member").headers), 403, "organization-managers-only")
        assert_problem(await client.get(path, headers=member("viewer").headers), 403, "organization-managers-only")
        other = member("owner", OTHER_ORG)
        assert_problem(await client.get(path, headers=other.headers), 404, "organization-not-found")
        assert_problem(await client.get(path, headers=User("user").headers), 404, "organization-not-found")
        assert_problem(await client.get(path), 401)
    assert_problem(await client.get(f"{API}/usage/orgs/not-an-id", headers=member("owner").headers), 404, "not-found")


async def test_each_of_my_keys_usage_apart(client: httpx.AsyncClient, analytics_app: Litestar) -> None:
    me, someone = member("member"), member("member")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    await deliver(
        analytics_app,
        [
            request(me, AIRTABLE, key=first),
            request(me, AIRTABLE, key=first, status=500),
            request(me, USERS, key=second),
            request(me, USERS),  # a signed-in request, no key
            request(someone, USERS, key=str(uuid.uuid4())),
        ],
    )
    response = await client.get(f"{API}/usage/me/keys", params={"days": 1}, headers=me.headers)
    assert response.status_code == 200, response.text
    today = datetime.now(UTC).date().isoformat()
    keys = {item["key_id"]: item for item in response.json()["keys"]}
    assert keys == {
        first: {"key_id": first, "api_calls": 2, "airtable_calls": 2, "errors": 1, "last_used_on": today},
        second: {"key_id": second, "api_calls": 1, "airtable_calls": 0, "errors": 0, "last_used_on": today},
    }
    assert (await client.get(f"{API}/usage/me", params={"days": 1}, headers=me.headers)).json()["totals"][
        "api_calls"
    ] == 4


async def test_records_of_an_older_gateway_are_counted_over_redis(
    client: httpx.AsyncClient, redis_url: str, redis_namespace: str
) -> None:
    """A message of records without ``organization_id`` and ``key_id`` (arrays of 9) still rolls up."""
    user = User()
    old = [user.id, "GET", AIRTABLE, 200, 3.0, 0, 0, "req-old", time.time()]
    redis = Redis.from_url(redis_url)
    try:
        await append(redis, usage_stream(redis_namespace), "r", [msgspec.msgpack.encode([old])], 10**6, "usage")

        async def counted() -> bool:
            usage = await client.get(f"{API}/usage/me", params={"days": 1}, headers=user.headers)
            return bool(usage.json()["totals"]["airtable_calls"] == 1)

        assert await eventually(counted, "the old record counted")
    finally:
        await redis.aclose()


async def test_the_embedded_database_sqlite_gives_the_same_organisation_usage(sqlite_app: Litestar) -> None:
    owner, key = member("owner"), str(uuid.uuid4())
    async with app_client(sqlite_app) as client:
        await deliver(sqlite_app, [request(owner, AIRTABLE, key=key), request(owner, AIRTABLE, key=key)])
        body: dict[str, Any] = (await client.get(org_url(ORG), headers=owner.headers)).json()
        assert body["totals"]["airtable_calls"] == 2
        keys = (await client.get(f"{API}/usage/me/keys", headers=owner.headers)).json()["keys"]
        assert [(item["key_id"], item["api_calls"]) for item in keys] == [(key, 2)]
