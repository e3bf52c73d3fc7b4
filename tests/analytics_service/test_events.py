"""POST /events and /events/batch: per-item results, dedup, limits, timestamps, IP and user agent."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.analytics_service.conftest import API, Clock, User, count_rows
from tests.conftest import app_client, assert_problem


def event(**fields: Any) -> dict[str, Any]:
    return {"event_type": "page_view", "event_id": str(uuid.uuid4()), **fields}


async def test_one_event_is_accepted_then_reported_duplicate(
    client: httpx.AsyncClient, user: User, clean_analytics_database: str
) -> None:
    body = event(properties={"page": "/bases"}, session_id="s-1")

    first = await client.post(f"{API}/events", json=body, headers=user.headers)
    again = await client.post(f"{API}/events", json=body, headers=user.headers)

    assert first.status_code == 202, first.text
    assert first.json() == {"index": 0, "status": "accepted", "event_id": body["event_id"]}
    assert again.status_code == 202
    assert again.json()["status"] == "duplicate"
    assert count_rows(clean_analytics_database, "events") == 1
    with psycopg.connect(clean_analytics_database) as conn:
        row = conn.execute("SELECT user_id, session_id, properties FROM events").fetchone()
    assert row == (user.id, "s-1", {"page": "/bases"})


async def test_an_event_id_is_unique_per_user_so_another_users_event_with_it_is_counted(
    client: httpx.AsyncClient, user: User, admin: User, clean_analytics_database: str
) -> None:
    """Another user's id neither suppresses an event nor tells the caller that the id exists."""
    body = event()
    other = User()

    mine = await client.post(f"{API}/events", json=body, headers=user.headers)
    theirs = await client.post(f"{API}/events", json=body, headers=other.headers)
    theirs_again = await client.post(f"{API}/events/batch", json={"events": [body, body]}, headers=other.headers)

    assert mine.json()["status"] == "accepted"
    assert theirs.json() == {"index": 0, "status": "accepted", "event_id": body["event_id"]}
    assert [r["status"] for r in theirs_again.json()["results"]] == ["duplicate", "duplicate"]
    for_both = await client.post(
        f"{API}/events/batch",
        json={"events": [event(event_id=body["event_id"], user_id=uid) for uid in (user.id, str(uuid.uuid4()))]},
        headers=admin.headers,
    )
    assert [r["status"] for r in for_both.json()["results"]] == ["duplicate", "accepted"]
    assert count_rows(clean_analytics_database, "events", f"event_id = '{body['event_id']}'") == 3
    with psycopg.connect(clean_analytics_database) as conn:
        assert conn.execute("SELECT sum(events) FROM event_hourly").fetchone() == (3,)


async def test_an_event_id_is_generated_when_absent(client: httpx.AsyncClient, user: User) -> None:
    response = await client.post(f"{API}/events", json={"event_type": "login"}, headers=user.headers)
    assert response.status_code == 202
    uuid.UUID(response.json()["event_id"])


async def test_a_batch_reports_each_item(client: httpx.AsyncClient, user: User, clean_analytics_database: str) -> None:
    repeated = event()
    items = [
        event(),
        repeated,
        repeated,  # the same id twice in one batch
        {"event_id": str(uuid.uuid4())},  # no event_type
        event(event_type="has spaces"),
        event(occurred_at="yesterday"),
        event(user_id=str(uuid.uuid4())),  # someone else's
        event(event_type="llm_usage", properties={"prompt_tokens": 3}),  # no model
        event(surprise=True),
    ]

    response = await client.post(f"{API}/events/batch", json={"events": items}, headers=user.headers)

    assert response.status_code == 202, response.text
    body = response.json()
    statuses = [result["status"] for result in body["results"]]
    assert statuses == ["accepted", "accepted", "duplicate", *["rejected"] * 6]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 6)
    assert [result["index"] for result in body["results"]] == list(range(len(items)))
    reasons = [result.get("reason", "") for result in body["results"][3:]]
    assert "event_type" in reasons[0]
    assert "event_type" in reasons[1]
    assert "occurred_at" in reasons[2]
    assert "user_id" in reasons[3]
    assert "model" in reasons[4]
    assert "surprise" in reasons[5]
    assert body["results"][4]["event_id"] == items[4]["event_id"]
    assert count_rows(clean_analytics_database, "events") == 2


async def test_a_resent_batch_stores_nothing_twice(
    client: httpx.AsyncClient, user: User, clean_analytics_database: str
) -> None:
    items = [event() for _ in range(50)]
    first = await client.post(f"{API}/events/batch", json={"events": items}, headers=user.headers)
    # Half new, half already sent, sent twice concurrently (a client retrying over a bad network).
    mixed = items[25:] + [event() for _ in range(25)]
    concurrent = await asyncio.gather(
        *(client.post(f"{API}/events/batch", json={"events": mixed}, headers=user.headers) for _ in range(2))
    )

    assert first.json()["accepted"] == 50
    assert all(r.status_code == 202 for r in concurrent)
    accepted = [r.json()["accepted"] for r in concurrent]
    assert sum(accepted) == 25  # each new event accepted exactly once, whichever request won
    assert sum(r.json()["duplicates"] for r in concurrent) == 75
    assert count_rows(clean_analytics_database, "events") == 75
    with psycopg.connect(clean_analytics_database) as conn:
        assert conn.execute("SELECT sum(events) FROM event_hourly").fetchone() == (75,)


async def test_more_than_1000_items_or_1_mb_is_refused_with_413(client: httpx.AsyncClient, user: User) -> None:
    too_many = await client.post(
        f"{API}/events/batch", json={"events": [{"event_type": "x"}] * 1001}, headers=user.headers
    )
    too_big = await client.post(
        f"{API}/events/batch",
        json={"events": [{"event_type": "x", "properties": {"blob": "x" * 1_100_000}}]},
        headers=user.headers,
    )
    assert_problem(too_many, 413, "batch-too-large")
    assert_problem(too_big, 413)


async def test_malformed_bodies_are_422(client: httpx.AsyncClient, user: User) -> None:
    for body in ({"events": []}, {"events": "no"}, {}, [1, 2]):
        assert_problem(await client.post(f"{API}/events/batch", json=body, headers=user.headers), 422)
    assert_problem(await client.post(f"{API}/events", json={"event_type": ""}, headers=user.headers), 422)
    numeric_time = {"event_type": "x", "occurred_at": 0}
    assert_problem(await client.post(f"{API}/events", json=numeric_time, headers=user.headers), 422)
    batch = await client.post(f"{API}/events/batch", json={"events": [numeric_time]}, headers=user.headers)
    assert batch.json()["results"][0]["status"] == "rejected"
    rejected = await client.post(
        f"{API}/events", json={"event_type": "x", "user_id": "someone-else"}, headers=user.headers
    )
    assert_problem(rejected, 422, "event-rejected")


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"occurred_at": 0}, "occurred_at"), ({"event_type": 5}, "event_type"), ({"properties": "{}"}, "properties")],
    ids=["number-for-date-time", "number-for-string", "string-for-object"],
)
async def test_a_value_of_the_wrong_json_type_is_a_422_naming_the_field(
    client: httpx.AsyncClient, user: User, clean_analytics_database: str, fields: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{API}/events", json=event(**fields), headers=user.headers)

    problem = assert_problem(response, 422, "validation-error")
    assert [error["key"] for error in problem["errors"]] == [field]
    assert count_rows(clean_analytics_database, "events") == 0


async def test_future_times_are_clamped_and_missing_ones_set_to_the_receive_time(
    client: httpx.AsyncClient, user: User, clock: Clock, clean_analytics_database: str
) -> None:
    future, past, missing = event(), event(), event()
    future["occurred_at"] = (clock.now + timedelta(days=2)).isoformat()
    past["occurred_at"] = (clock.now - timedelta(hours=3)).isoformat()
    response = await client.post(f"{API}/events/batch", json={"events": [future, past, missing]}, headers=user.headers)
    assert response.json()["accepted"] == 3

    with psycopg.connect(clean_analytics_database) as conn:
        rows = dict(conn.execute("SELECT event_id::text, occurred_at FROM events").fetchall())
        received = conn.execute("SELECT DISTINCT received_at FROM events").fetchall()
    assert received == [(clock.now,)]
    assert rows[future["event_id"]] == clock.now
    assert rows[missing["event_id"]] == clock.now
    assert rows[past["event_id"]] == clock.now - timedelta(hours=3)


async def test_events_older_than_the_retention_are_rejected(
    client: httpx.AsyncClient, user: User, clock: Clock
) -> None:
    old = event(occurred_at=(clock.now - timedelta(days=91)).isoformat())
    response = await client.post(f"{API}/events/batch", json={"events": [old]}, headers=user.headers)
    assert response.json()["results"][0]["status"] == "rejected"
    assert "retention" in response.json()["results"][0]["reason"]


async def test_the_client_ip_behind_a_trusted_proxy_and_the_user_agent_are_recorded(
    make_settings: Any, clock: Clock, user: User, clean_analytics_database: str
) -> None:
    from analytics_service.app import create_app

    app = create_app(make_settings(trusted_proxies="10.0.0.0/8"), clock=clock)
    async with app_client(app, client_ip="10.1.2.3") as proxied:
        headers = {**user.headers, "X-Forwarded-For": "203.0.113.7", "User-Agent": "sdk/1.2"}
        assert (await proxied.post(f"{API}/events", json=event(), headers=headers)).status_code == 202
    async with app_client(app, client_ip="198.51.100.9") as direct:
        headers = {**user.headers, "X-Forwarded-For": "203.0.113.8"}  # not from a trusted proxy: ignored
        assert (await direct.post(f"{API}/events", json=event(), headers=headers)).status_code == 202

    with psycopg.connect(clean_analytics_database) as conn:
        rows = set(conn.execute("SELECT ip, user_agent FROM events").fetchall())
    assert ("203.0.113.7", "sdk/1.2") in rows
    assert {ip for ip, _ in rows} == {"203.0.113.7", "198.51.100.9"}


async def test_an_admin_may_record_events_of_another_user(
    client: httpx.AsyncClient, admin: User, clean_analytics_database: str
) -> None:
    other = str(uuid.uuid4())
    response = await client.post(f"{API}/events", json=event(user_id=other), headers=admin.headers)
    assert response.json()["status"] == "accepted"
    assert count_rows(clean_analytics_database, "events", f"user_id = '{other}'") == 1


async def test_every_route_needs_a_valid_token(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("POST", "/events"),
        ("POST", "/events/batch"),
        ("POST", "/metrics"),
        ("POST", "/metrics/batch"),
        ("GET", "/metrics"),
        ("GET", "/usage/me"),
        ("GET", f"/usage/{uuid.uuid4()}"),
        ("GET", "/costs"),
        ("GET", "/dashboard"),
    ):
        for headers in ({}, {"Authorization": "Bearer not.a.token"}):
            response = await client.request(method, f"{API}{path}", json={}, headers=headers)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_event_ids_are_compared_as_uuids_whatever_their_case(
    client: httpx.AsyncClient, user: User, clean_analytics_database: str
) -> None:
    event_id = str(uuid.uuid4())
    upper = await client.post(f"{API}/events", json=event(event_id=event_id.upper()), headers=user.headers)
    lower = await client.post(f"{API}/events", json=event(event_id=event_id), headers=user.headers)
    assert upper.json() == {"index": 0, "status": "accepted", "event_id": event_id}
    assert lower.json()["status"] == "duplicate"
    assert count_rows(clean_analytics_database, "events") == 1
    not_a_uuid = await client.post(
        f"{API}/events/batch", json={"events": [event(event_id="1234")]}, headers=user.headers
    )
    assert not_a_uuid.json()["results"][0]["status"] == "rejected"
    assert "event_id" in not_a_uuid.json()["results"][0]["reason"]


async def test_a_nul_character_is_rejected_not_a_server_error(
    client: httpx.AsyncClient, user: User, admin: User, clean_analytics_database: str
) -> None:
    items = [
        event(properties={"text": "a\u0000b"}),
        event(session_id="s\u0000"),
        event(properties={"k\u0000": 1}),
        event(),
    ]
    response = await client.post(f"{API}/events/batch", json={"events": items}, headers=user.headers)
    assert response.status_code == 202, response.text
    assert [r["status"] for r in response.json()["results"]] == ["rejected", "rejected", "rejected", "accepted"]
    assert "NUL" in response.json()["results"][0]["reason"]
    single = await client.post(f"{API}/events", json=event(session_id="\u0000"), headers=user.headers)
    assert "NUL" in assert_problem(single, 422, "validation-error")["detail"]  # the kernel's door
    metric = await client.post(f"{API}/metrics", json={"name": "m\u0000", "value": 1}, headers=user.headers)
    assert_problem(metric, 422)
    assert count_rows(clean_analytics_database, "events") == 1
    for path, params in (("/usage/%00", {}), ("/costs", {"user_id": "\u0000"}), ("/metrics", {"name": "\u0000"})):
        assert_problem(await client.get(f"{API}{path}", params=params, headers=admin.headers), 422)
