"""GET /usage/me, /usage/{user_id}, /costs and /dashboard, from usage records and LLM events."""

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar

from analytics_service.workers import apply_usage
from shared.usage import UsageMessage, UsageRecord
from tests.analytics_service.conftest import API, Clock, User
from tests.conftest import app_client, assert_problem


async def deliver(app: Litestar, records: list[UsageRecord], message_id: str | None = None) -> int:
    async with app.state.sessionmaker() as session, session.begin():
        message = UsageMessage(message_id or uuid.uuid4().hex, records)
        return await apply_usage(session, [message], datetime.now(UTC))


def request(user: User | None, route: str = "/api/v1/users", status: int = 200, at: float | None = None) -> UsageRecord:
    return UsageRecord(
        user.id if user else None, "GET", route, status, 12.5, 100, 0, uuid.uuid4().hex, at or time.time()
    )


def llm(model: str, prompt: int, completion: int, cost: float, **fields: Any) -> dict[str, Any]:
    properties = {"model": model, "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost}
    return {"event_type": "llm_usage", "properties": {**properties, **fields}}


async def test_usage_counts_calls_airtable_calls_errors_tokens_and_cost(
    client: httpx.AsyncClient, analytics_app: Litestar, user: User
) -> None:
    records = [request(user), request(user, "/api/v1/airtable"), request(user, status=502), request(user, status=404)]
    assert await deliver(analytics_app, records) == 4
    events = [llm("gpt-4o", 100, 50, 0.25), llm("gpt-4o", 10, 5, 0.5)]
    await client.post(f"{API}/events/batch", json={"events": events}, headers=user.headers)

    response = await client.get(f"{API}/usage/me", params={"days": 7}, headers=user.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user.id
    assert body["totals"] == {
        "api_calls": 4,
        "airtable_calls": 1,
        "errors": 1,  # 5xx only: a 404 is the client's
        "tokens_used": 165,
        "cost_usd": 0.75,
    }
    assert len(body["items"]) == 7  # every day of the period, zeros included
    assert body["items"][-1]["period_start"] == body["end"]
    assert body["items"][-1]["api_calls"] == 4


async def test_a_redelivered_usage_message_is_counted_once(
    client: httpx.AsyncClient, analytics_app: Litestar, user: User
) -> None:
    records = [request(user), request(user)]
    assert await deliver(analytics_app, records, "1-0") == 2
    assert await deliver(analytics_app, records, "1-0") == 0
    usage = (await client.get(f"{API}/usage/me", headers=user.headers)).json()
    assert usage["totals"]["api_calls"] == 2


async def test_usage_per_week_and_month(
    client: httpx.AsyncClient, analytics_app: Litestar, user: User, clock: Clock
) -> None:
    today = clock.now
    await deliver(analytics_app, [request(user, at=(today - timedelta(days=d)).timestamp()) for d in (0, 0, 8, 40)])

    weeks = (await client.get(f"{API}/usage/me", params={"period": "week", "days": 60}, headers=user.headers)).json()
    months = (await client.get(f"{API}/usage/me", params={"period": "month", "days": 60}, headers=user.headers)).json()

    this_monday = (today - timedelta(days=today.weekday())).date().isoformat()
    assert weeks["items"][-1] == {**weeks["items"][-1], "period_start": this_monday, "api_calls": 2}
    assert all(datetime.fromisoformat(i["period_start"]).weekday() == 0 for i in weeks["items"][1:])
    assert sum(i["api_calls"] for i in weeks["items"]) == 4
    assert months["items"][-1]["period_start"] == today.date().replace(day=1).isoformat()
    assert sum(i["api_calls"] for i in months["items"]) == 4
    assert len(months["items"]) in (2, 3)


async def test_users_see_only_their_own_usage_and_admins_anyones(
    client: httpx.AsyncClient, analytics_app: Litestar, user: User, admin: User
) -> None:
    other = User()
    await deliver(analytics_app, [request(other)])

    own = await client.get(f"{API}/usage/{user.id}", headers=user.headers)
    theirs = await client.get(f"{API}/usage/{other.id}", headers=user.headers)
    by_admin = await client.get(f"{API}/usage/{other.id}", headers=admin.headers)

    assert own.status_code == 200
    assert own.json()["totals"]["api_calls"] == 0
    assert_problem(theirs, 403, "not-your-data")
    assert by_admin.json()["totals"]["api_calls"] == 1
    for params in ({"period": "year"}, {"days": 0}, {"days": 367}):
        assert_problem(await client.get(f"{API}/usage/me", params=params, headers=user.headers), 422)


async def test_costs_totals_and_breakdowns_by_user_service_and_model(
    client: httpx.AsyncClient, analytics_app: Litestar, user: User, admin: User
) -> None:
    other = User()
    await deliver(analytics_app, [request(user), request(user), request(other)])
    for who, events in (
        (user, [llm("gpt-4o", 100, 100, 1.0, service="chat"), llm("claude", 50, 50, 0.5, service="search")]),
        (other, [llm("gpt-4o", 300, 0, 3.0)]),
    ):
        response = await client.post(f"{API}/events/batch", json={"events": events}, headers=who.headers)
        assert response.json()["accepted"] == len(events)

    everyone = (await client.get(f"{API}/costs", headers=admin.headers)).json()
    mine = (await client.get(f"{API}/costs", headers=user.headers)).json()
    theirs = await client.get(f"{API}/costs", params={"user_id": other.id}, headers=user.headers)
    one_user = (await client.get(f"{API}/costs", params={"user_id": other.id}, headers=admin.headers)).json()

    assert everyone["totals"] == {
        "cost_usd": 4.5,
        "tokens_used": 600,
        "api_calls": 3,
        "cost_per_token": 4.5 / 600,
        "cost_per_api_call": 1.5,
    }
    assert [(u["user_id"], u["cost_usd"]) for u in everyone["by_user"]] == [(other.id, 3.0), (user.id, 1.5)]
    assert [(s["name"], s["cost_usd"], s["calls"]) for s in everyone["by_service"]] == [
        ("unknown", 3.0, 1),
        ("chat", 1.0, 1),
        ("search", 0.5, 1),
    ]
    assert [(m["name"], m["tokens_used"]) for m in everyone["by_model"]] == [("gpt-4o", 500), ("claude", 100)]
    assert mine["totals"]["cost_usd"] == 1.5
    assert [u["user_id"] for u in mine["by_user"]] == [user.id]
    assert {m["name"] for m in mine["by_model"]} == {"gpt-4o", "claude"}
    assert_problem(theirs, 403, "not-your-data")
    assert one_user["totals"]["cost_usd"] == 3.0


async def test_the_dashboard_is_for_admins_and_sums_the_window(
    client: httpx.AsyncClient, analytics_app: Litestar, user: User, admin: User, clock: Clock
) -> None:
    long_ago = (clock.now - timedelta(hours=30)).timestamp()
    await deliver(
        analytics_app,
        [
            request(user, "/api/v1/airtable"),
            request(user, "/api/v1/airtable", status=503),
            request(user),
            request(None, "/api/v1/auth"),
            request(user, "/api/v1/airtable", at=long_ago),
        ],
    )
    await client.post(
        f"{API}/events/batch",
        json={"events": [llm("gpt-4o", 1, 1, 0.125), {"event_type": "page_view"}]},
        headers=user.headers,
    )

    refused = await client.get(f"{API}/dashboard", headers=user.headers)
    body = (await client.get(f"{API}/dashboard", params={"hours": 24}, headers=admin.headers)).json()

    assert_problem(refused, 403, "admin-only")
    assert body["total_events"] == 2
    assert body["api_calls"] == 4
    assert body["errors"] == 1
    assert body["error_rate"] == 0.25
    assert body["total_cost_usd"] == 0.125
    assert body["active_users"] == 1
    assert [(e["route"], e["calls"], e["errors"]) for e in body["top_endpoints"]] == [
        ("/api/v1/airtable", 2, 1),
        ("/api/v1/auth", 1, 0),
        ("/api/v1/users", 1, 0),
    ]
    assert body["top_endpoints"][0]["avg_latency_ms"] == 12.5
    assert [e["event_type"] for e in body["recent_events"]] == ["llm_usage", "page_view"] or [
        e["event_type"] for e in body["recent_events"]
    ] == ["page_view", "llm_usage"]
    wider = (await client.get(f"{API}/dashboard", params={"hours": 48}, headers=admin.headers)).json()
    assert wider["api_calls"] == 5
    for hours in (0, 2161, "x"):
        assert_problem(await client.get(f"{API}/dashboard", params={"hours": hours}, headers=admin.headers), 422)


async def test_the_embedded_database_sqlite_gives_the_same_reports(
    sqlite_app: Litestar, user: User, admin: User, clock: Clock
) -> None:
    async with app_client(sqlite_app) as client:
        await deliver(sqlite_app, [request(user, "/api/v1/airtable"), request(user, status=500)])
        events = [llm("gpt-4o", 10, 5, 0.25, service="chat"), {"event_type": "page_view"}]
        first = await client.post(f"{API}/events/batch", json={"events": events}, headers=user.headers)
        again = await client.post(f"{API}/events/batch", json={"events": events[:1]}, headers=user.headers)
        usage = (await client.get(f"{API}/usage/me", headers=user.headers)).json()
        costs = (await client.get(f"{API}/costs", headers=admin.headers)).json()
        dashboard = (await client.get(f"{API}/dashboard", headers=admin.headers)).json()

    assert first.json()["accepted"] == 2
    assert again.json()["accepted"] == 1  # no event_id given: a new event each time
    assert usage["totals"] == {"api_calls": 2, "airtable_calls": 1, "errors": 1, "tokens_used": 30, "cost_usd": 0.5}
    assert [(m["name"], m["calls"]) for m in costs["by_model"]] == [("gpt-4o", 2)]
    assert (dashboard["total_events"], dashboard["api_calls"], dashboard["errors"]) == (3, 2, 1)
    assert dashboard["total_cost_usd"] == 0.5
    assert len(dashboard["recent_events"]) == 3
