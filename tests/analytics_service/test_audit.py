"""The audit log: the services' ``audit.recorded`` events, published on the real event bus, are
stored once each and read back newest first, filtered and paged, by those allowed to see them."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar

from analytics_service.app import create_app
from analytics_service.services.audit import apply_audit_event
from analytics_service.workers import purge
from shared.audit import audit_event
from shared.db import create_engine, create_sessionmaker
from shared.events import Event
from tests.analytics_service.conftest import API, SettingsFactory, User, count_rows
from tests.conftest import app_client, assert_problem, eventually

AUDIT = f"{API}/audit"
ORG, OTHER_ORG = str(uuid.uuid4()), str(uuid.uuid4())


def manager(role: str = "owner", org: str = ORG) -> User:
    return User("user", tid=org, org_role=role)


def entry(
    action: str, *, org: str | None = ORG, actor: str | None = None, at: datetime | None = None, **more: Any
) -> Event:
    return audit_event(
        "auth",
        action,
        actor_id=actor or str(uuid.uuid4()),
        organization_id=org,
        ip="203.0.113.9",
        request_id="req-1",
        at=at,
        **more,
    )


async def publish_and_wait(app: Litestar, client: httpx.AsyncClient, *events: Event) -> None:
    """Publish on the app's bus; wait until each is readable by a platform administrator."""
    for event in events:
        await app.state.bus.publish(event)
    admin = User("admin", "user")

    async def stored() -> bool:
        response = await client.get(AUDIT, params={"limit": 500}, headers=admin.headers)
        ids = {item["id"] for item in response.json()["entries"]}
        return {event.id for event in events} <= ids

    await eventually(stored, "the audit events stored")


async def test_an_event_is_stored_once_with_what_it_says(
    analytics_app: Litestar, client: httpx.AsyncClient, clean_analytics_database: str
) -> None:
    actor, target = str(uuid.uuid4()), str(uuid.uuid4())
    event = entry(
        "member.role_changed",
        actor=actor,
        target_type="user",
        target_id=target,
        details={"from": "member", "to": "admin"},
    )
    await publish_and_wait(analytics_app, client, event)
    await publish_and_wait(analytics_app, client, event)  # redelivered

    assert count_rows(clean_analytics_database, "audit_log") == 1
    response = await client.get(AUDIT, headers=manager("admin").headers)
    assert response.status_code == 200, response.text
    [stored] = response.json()["entries"]
    assert stored == {
        "id": event.id,
        "occurred_at": stored["occurred_at"],
        "action": "member.role_changed",
        "actor_id": actor,
        "organization_id": ORG,
        "target_type": "user",
        "target_id": target,
        "ip": "203.0.113.9",
        "request_id": "req-1",
        "details": {"from": "member", "to": "admin"},
        "source": "auth",
    }
    assert datetime.fromisoformat(stored["occurred_at"]) == event.occurred_at


async def test_filters_narrow_the_entries(analytics_app: Litestar, client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    actor, target = str(uuid.uuid4()), str(uuid.uuid4())
    old = entry("login.failed", actor=actor, at=now - timedelta(days=3))
    recent = entry("login.failed", at=now - timedelta(hours=1), target_id=target)
    other = entry("login.succeeded", actor=actor, at=now - timedelta(hours=2))
    elsewhere = entry("login.failed", org=OTHER_ORG)
    await publish_and_wait(analytics_app, client, old, recent, other, elsewhere)
    admin = User("admin", "user")

    async def ids(**params: Any) -> list[str]:
        response = await client.get(AUDIT, params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["entries"]]

    assert await ids(action="login.failed", organization_id=ORG) == [recent.id, old.id]
    assert await ids(actor_id=actor) == [other.id, old.id]
    assert await ids(target_id=target) == [recent.id]
    assert await ids(organization_id=OTHER_ORG) == [elsewhere.id]
    since = (now - timedelta(days=1)).isoformat()
    until = (now - timedelta(minutes=90)).isoformat()
    assert await ids(organization_id=ORG, since=since, until=until) == [other.id]


async def audit_pages(client: httpx.AsyncClient, limit: int, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every page of the audit log, ``limit`` entries a page, its next_cursor followed to the end."""
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = await client.get(AUDIT, params=params, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        if pages[-1].get("next_cursor") is None:
            return pages
        params["cursor"] = pages[-1]["next_cursor"]


def entry_ids(pages: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for page in pages for item in page["entries"]]


def newest_first(events: list[Event]) -> list[str]:
    """The events' ids in the log's order: newest first, ties by id."""
    return [
        event.id for event in sorted(events, key=lambda event: (event.occurred_at, uuid.UUID(event.id)), reverse=True)
    ]


async def test_pages_follow_each_other_without_gaps_or_repeats(
    analytics_app: Litestar, client: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC)
    same_moment = now - timedelta(minutes=5)  # ties are ordered by id
    events = [entry("org.renamed", at=same_moment) for _ in range(4)]
    events += [entry("org.renamed", at=now - timedelta(minutes=minute)) for minute in range(1, 4)]
    await publish_and_wait(analytics_app, client, *events)
    owner = manager()

    pages = await audit_pages(client, 3, owner.headers)
    assert all(len(page["entries"]) <= 3 for page in pages)
    assert entry_ids(pages) == newest_first(events)


async def test_who_sees_what(analytics_app: Litestar, client: httpx.AsyncClient) -> None:
    ours, theirs = entry("invitation.created"), entry("invitation.created", org=OTHER_ORG)
    await publish_and_wait(analytics_app, client, ours, theirs)

    async def ids(caller: User, **params: Any) -> list[str]:
        response = await client.get(AUDIT, params=params, headers=caller.headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["entries"]]

    # An organisation's owners and admins: their active organisation's entries only.
    assert await ids(manager("owner")) == [ours.id]
    assert await ids(manager("admin"), organization_id=ORG) == [ours.id]
    assert await ids(manager("owner", OTHER_ORG)) == [theirs.id]
    response = await client.get(AUDIT, params={"organization_id": OTHER_ORG}, headers=manager().headers)
    assert_problem(response, 403, "organization-managers-only")
    # Members, viewers and users without an organisation: none.
    for caller in (manager("member"), manager("viewer"), User("user")):
        assert_problem(await client.get(AUDIT, headers=caller.headers), 403, "organization-managers-only")
    # Platform administrators: every organisation's.
    assert set(await ids(User("admin", "user"))) == {ours.id, theirs.id}
    assert_problem(await client.get(AUDIT), 401)


INVALID = (422, "validation-error")


async def test_absurd_filters_are_refused(client: httpx.AsyncClient) -> None:
    admin = User("admin", "user")
    for params, refusal in (
        ({"since": "0001-01-01T00:00:00Z"}, INVALID),
        ({"until": "99999-01-01T00:00:00Z"}, INVALID),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, (422, "invalid-query")),
        ({"actor_id": "not-a-uuid"}, INVALID),
        ({"organization_id": "x"}, INVALID),
        ({"action": "Login Failed"}, INVALID),
        ({"target_id": "a\x00b"}, INVALID),
        ({"cursor": "bm90IGEgY3Vyc29y"}, (400, "invalid-cursor")),
        ({"cursor": "%%%"}, (400, "invalid-cursor")),
        ({"limit": 501}, INVALID),
        ({"limit": 0}, INVALID),
    ):
        response = await client.get(AUDIT, params=params, headers=admin.headers)
        assert_problem(response, *refusal)


async def test_entries_past_the_audit_retention_are_purged(
    make_settings: SettingsFactory, clean_analytics_database: str, clock: Any
) -> None:
    settings = make_settings(audit_retention_days=30)
    app_ = create_app(settings, clock=clock)
    now = datetime.now(UTC)
    kept, expired = (
        entry("login.succeeded", at=now - timedelta(days=29)),
        entry("login.failed", at=now - timedelta(days=31)),
    )
    async with app_client(app_) as client:
        await publish_and_wait(app_, client, kept, expired)
    engine = create_engine(settings)
    try:
        deleted = await purge(create_sessionmaker(engine), settings, now)
    finally:
        await engine.dispose()
    assert deleted["audit_log"] == 1
    assert count_rows(clean_analytics_database, "audit_log") == 1
    assert count_rows(clean_analytics_database, "audit_log", f"id = '{kept.id}'") == 1


async def test_the_embedded_database_sqlite_stores_and_pages_the_same(sqlite_app: Litestar) -> None:
    app = sqlite_app
    moment = datetime.now(UTC) - timedelta(minutes=1)
    events = [entry("grant.created", at=moment) for _ in range(3)] + [entry("grant.revoked")]
    async with app_client(app) as client:
        for event in [*events, events[0]]:  # the first one twice: stored once
            async with app.state.sessionmaker() as session, session.begin():
                await apply_audit_event(session, event)
        pages = await audit_pages(client, 2, manager().headers)
    assert entry_ids(pages) == newest_first(events)
