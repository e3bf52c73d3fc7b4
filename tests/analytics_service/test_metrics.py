"""POST /metrics, /metrics/batch and GET /metrics: filters, aggregations, access."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from analytics_service.app import create_app
from analytics_service.config import AnalyticsSettings
from shared import migrations
from tests.analytics_service.conftest import API, JWT_SECRET, Clock, User
from tests.conftest import app_client, assert_problem

MINUTE = (datetime.now(UTC) - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
DAY = MINUTE.strftime("%Y-%m-%d")


def at(hhmm: str) -> str:
    return f"{DAY}T{hhmm}:00Z"


def metric(value: float, offset_seconds: float = 0, **fields: Any) -> dict[str, Any]:
    timestamp = (MINUTE + timedelta(seconds=offset_seconds)).isoformat()
    return {"name": "latency_ms", "value": value, "type": "histogram", "timestamp": timestamp, **fields}


async def test_a_metric_is_recorded_and_listed_newest_first(client: httpx.AsyncClient, user: User) -> None:
    created = await client.post(
        f"{API}/metrics",
        json={
            "name": "airtable_calls",
            "value": 3,
            "service_name": "airtable",
            "endpoint": "/bases",
            "labels": {"a": 1},
        },
        headers=user.headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["type"] == "counter"
    assert body["user_id"] == user.id
    assert body["labels"] == {"a": 1}
    batch = await client.post(
        f"{API}/metrics/batch",
        json={"metrics": [metric(1, 0, name="airtable_calls", service_name="other")]},
        headers=user.headers,
    )
    assert batch.status_code == 201
    assert batch.json() == {"created": 1}

    listed = (await client.get(f"{API}/metrics", params={"name": "airtable_calls"}, headers=user.headers)).json()
    assert listed["count"] == 1  # the batch's value is older than the default window (the last day)
    window = {"from": at("00:00"), "name": "airtable_calls"}
    listed = (await client.get(f"{API}/metrics", params=window, headers=user.headers)).json()
    assert [m["value"] for m in listed["metrics"]] == [3.0, 1.0]
    filtered = await client.get(f"{API}/metrics", params={**window, "service": "other"}, headers=user.headers)
    assert [m["service_name"] for m in filtered.json()["metrics"]] == ["other"]
    by_endpoint = await client.get(f"{API}/metrics", params={**window, "endpoint": "/bases"}, headers=user.headers)
    assert by_endpoint.json()["count"] == 1


async def test_aggregations_per_bucket(client: httpx.AsyncClient, user: User) -> None:
    values = [metric(float(v), offset_seconds=i) for i, v in enumerate(range(1, 11))]  # 1..10 in one minute
    values.append(metric(100.0, offset_seconds=90))  # the next minute
    assert (
        await client.post(f"{API}/metrics/batch", json={"metrics": values}, headers=user.headers)
    ).status_code == 201

    async def points(aggregation: str, interval: str = "minute") -> list[tuple[str, float, int]]:
        params = {
            "name": "latency_ms",
            "from": at("11:00"),
            "to": at("13:00"),
            "aggregation": aggregation,
            "interval": interval,
        }
        response = await client.get(f"{API}/metrics", params=params, headers=user.headers)
        assert response.status_code == 200, response.text
        return [(p["bucket"], p["value"], p["count"]) for p in response.json()["points"]]

    assert await points("sum") == [(at("12:00"), 55.0, 10), (at("12:01"), 100.0, 1)]
    assert [v for _, v, _ in await points("avg")] == [5.5, 100.0]
    assert [v for _, v, _ in await points("min")] == [1.0, 100.0]
    assert [v for _, v, _ in await points("max")] == [10.0, 100.0]
    assert [v for _, v, _ in await points("count")] == [10.0, 1.0]
    assert [v for _, v, _ in await points("p50")] == [5.5, 100.0]
    assert [v for _, v, _ in await points("p95")] == [pytest.approx(9.55), 100.0]
    assert await points("sum", "hour") == [(at("12:00"), 155.0, 11)]
    assert await points("max", "day") == [(at("00:00"), 100.0, 11)]


async def test_users_see_their_own_metrics_and_admins_everyone(
    client: httpx.AsyncClient, user: User, admin: User
) -> None:
    other = User()
    for owner in (user, other):
        await client.post(f"{API}/metrics", json={"name": "m", "value": 1}, headers=owner.headers)

    mine = (await client.get(f"{API}/metrics", headers=user.headers)).json()
    everyone = (await client.get(f"{API}/metrics", headers=admin.headers)).json()
    theirs = await client.get(f"{API}/metrics", params={"user_id": other.id}, headers=user.headers)
    for_other = await client.post(
        f"{API}/metrics", json={"name": "m", "value": 1, "user_id": other.id}, headers=user.headers
    )
    by_admin = await client.post(
        f"{API}/metrics", json={"name": "m", "value": 1, "user_id": other.id}, headers=admin.headers
    )

    assert {m["user_id"] for m in mine["metrics"]} == {user.id}
    assert {m["user_id"] for m in everyone["metrics"]} == {user.id, other.id}
    assert_problem(theirs, 403, "not-your-data")
    assert_problem(for_other, 403, "not-your-data")
    assert by_admin.status_code == 201


async def test_a_string_for_a_number_is_a_422_naming_the_field_and_query_text_still_converts(
    client: httpx.AsyncClient, user: User
) -> None:
    h = user.headers
    one = await client.post(f"{API}/metrics", json={"name": "m", "value": "5"}, headers=h)
    batch = await client.post(f"{API}/metrics/batch", json={"metrics": [{"name": "m", "value": "5"}]}, headers=h)
    assert [error["key"] for error in assert_problem(one, 422, "validation-error")["errors"]] == ["value"]
    assert [error["key"] for error in assert_problem(batch, 422, "validation-error")["errors"]] == ["metrics[0].value"]

    assert (await client.post(f"{API}/metrics", json={"name": "m", "value": 5}, headers=h)).status_code == 201
    listed = await client.get(f"{API}/metrics", params={"name": "m", "limit": "5"}, headers=h)
    assert listed.status_code == 200, listed.text
    assert [metric["value"] for metric in listed.json()["metrics"]] == [5]


async def test_bad_metric_requests_are_4xx(client: httpx.AsyncClient, user: User) -> None:
    h = user.headers
    assert_problem(await client.post(f"{API}/metrics", json={"name": "m", "value": 1, "type": "x"}, headers=h), 422)
    assert_problem(await client.post(f"{API}/metrics", json={"name": "", "value": 1}, headers=h), 422)
    assert_problem(await client.post(f"{API}/metrics", json={"name": "m", "value": "NaN"}, headers=h), 422)
    # Strictly as the schema says: no number for a date-time, no string for a number.
    assert_problem(await client.post(f"{API}/metrics", json={"name": "m", "value": 1, "timestamp": 0}, headers=h), 422)
    assert_problem(await client.post(f"{API}/metrics", json={"name": "m", "value": "5"}, headers=h), 422)
    lenient = {"metrics": [{"name": "m", "value": 1, "timestamp": 0}]}
    assert_problem(await client.post(f"{API}/metrics/batch", json=lenient, headers=h), 422)
    too_many = {"metrics": [{"name": "m", "value": 1}] * 1001}
    assert_problem(await client.post(f"{API}/metrics/batch", json=too_many, headers=h), 413, "batch-too-large")
    assert_problem(await client.post(f"{API}/metrics/batch", json={"metrics": []}, headers=h), 422)
    no_name = await client.get(f"{API}/metrics", params={"aggregation": "sum"}, headers=h)
    assert_problem(no_name, 422, "invalid-query")
    backwards = {"from": at("12:00"), "to": at("11:00")}
    assert_problem(await client.get(f"{API}/metrics", params=backwards, headers=h), 422, "invalid-query")
    too_fine = {
        "name": "m",
        "aggregation": "sum",
        "interval": "minute",
        "from": (MINUTE - timedelta(days=30)).isoformat(),
    }
    assert_problem(await client.get(f"{API}/metrics", params=too_fine, headers=h), 422, "invalid-query")
    assert_problem(await client.get(f"{API}/metrics", params={"aggregation": "median"}, headers=h), 422)
    assert_problem(await client.get(f"{API}/metrics", params={"limit": 0}, headers=h), 422)
    assert_problem(await client.get(f"{API}/metrics", params={"from": "soon"}, headers=h), 422)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> AnalyticsSettings:
    settings = AnalyticsSettings(data_dir=str(tmp_path), jwt_secret=JWT_SECRET)
    migrations.upgrade(settings, "analytics_service")
    return settings


async def test_aggregations_on_sqlite_match_postgresql(
    sqlite_settings: AnalyticsSettings, clock: Clock, user: User
) -> None:
    """The embedded run mode's database computes the same points (in Python)."""
    settings = sqlite_settings
    values = [metric(float(v), offset_seconds=i) for i, v in enumerate(range(1, 11))]
    async with app_client(create_app(settings, clock=clock)) as sqlite_client:
        await sqlite_client.post(f"{API}/metrics/batch", json={"metrics": values}, headers=user.headers)
        params = {"name": "latency_ms", "from": at("11:00"), "to": at("13:00")}
        results = {}
        for aggregation in ("sum", "p50", "p95", "count"):
            response = await sqlite_client.get(
                f"{API}/metrics", params={**params, "aggregation": aggregation}, headers=user.headers
            )
            results[aggregation] = [(p["bucket"], p["value"], p["count"]) for p in response.json()["points"]]
    assert results["sum"] == [(at("12:00"), 55.0, 10)]
    assert results["p50"][0][1] == 5.5
    assert results["p95"][0][1] == pytest.approx(9.55)
    assert results["count"][0][1] == 10.0
