"""The older platform service's analytics routes, through the gateway in front of the real analytics
service (PostgreSQL, Redis): the old request and response shapes, the API key, the access rules
of the platform, and deprecation headers."""

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app
from tests.conftest import app_client, eventually
from tests.gateway.conftest import SettingsFactory, access_token, assert_problem

ANALYTICS = "/api/v1/analytics"
API_KEY = "legacy-analytics-key-0123456789"
EVENT_FIELDS = {"id", "event_type", "event_data", "user_id", "session_id", "timestamp"}
METRIC_FIELDS = {
    "id",
    "metric_name",
    "metric_value",
    "metric_type",
    "user_id",
    "service_name",
    "endpoint",
    "labels",
    "timestamp",
}


class Caller:
    def __init__(self, *roles: str) -> None:
        self.id = str(uuid.uuid4())
        self.headers = {
            "X-API-Key": API_KEY,
            "Authorization": f"Bearer {access_token(sub=self.id, roles=list(roles or ['user']))}",
        }


@pytest.fixture
async def legacy(make_settings: SettingsFactory, analytics_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    gateway = create_app(make_settings(api_key=API_KEY, request_timeout=10.0), services={ANALYTICS: analytics_app})
    async with app_client(gateway) as client:
        yield client


def assert_deprecated(response: httpx.Response, successor: str) -> None:
    assert response.headers["deprecation"] == "@1796083200"
    assert response.headers["link"] == f'<{successor}>; rel="successor-version"'


async def track(client: httpx.AsyncClient, caller: Caller, path: str = "/analytics/events", **fields: Any) -> Any:
    response = await client.post(path, json={"event_type": "page_view", **fields}, headers=caller.headers)
    assert response.status_code == 200, response.text
    return response.json()


def llm_usage(tokens: int, cost: float) -> dict[str, Any]:
    return {
        "event_type": "llm_usage",
        "event_data": {"model": "gpt-x", "prompt_tokens": tokens, "completion_tokens": 0, "cost_usd": cost},
    }


@pytest.mark.parametrize("path", ["/analytics/events", "/events"])
async def test_track_event_answers_the_old_event_shape(legacy: httpx.AsyncClient, path: str) -> None:
    caller = Caller()

    response = await legacy.post(
        path,
        json={"event_type": "page_view", "event_data": {"page": "/home"}, "session_id": "s-1"},
        headers=caller.headers,
    )

    assert response.status_code == 200, response.text
    event = response.json()
    assert set(event) == EVENT_FIELDS
    assert uuid.UUID(event["id"])
    assert (event["event_type"], event["event_data"]) == ("page_view", {"page": "/home"})
    assert (event["user_id"], event["session_id"]) == (caller.id, "s-1")
    assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None
    assert_deprecated(response, f"{ANALYTICS}/events")


async def test_tracked_events_show_in_the_dashboard_for_admins_only(legacy: httpx.AsyncClient) -> None:
    caller, admin = Caller(), Caller("admin")
    tracked = await track(legacy, caller, event_data={"n": 1})

    refused = await legacy.get("/analytics/dashboard", headers=caller.headers)
    dashboard = await legacy.get("/analytics/dashboard?hours=1", headers=admin.headers)

    assert_problem(refused, 403)
    assert dashboard.status_code == 200, dashboard.text
    body = dashboard.json()
    assert set(body) == {
        "total_events",
        "active_users",
        "total_api_calls",
        "total_cost",
        "top_endpoints",
        "recent_events",
    }
    assert body["total_events"] == 1
    assert body["recent_events"] == [tracked]
    assert_deprecated(dashboard, f"{ANALYTICS}/dashboard")


async def test_an_event_for_another_user_needs_the_admin_role(legacy: httpx.AsyncClient) -> None:
    caller, admin, other = Caller(), Caller("admin"), str(uuid.uuid4())

    refused = await legacy.post("/events", json={"event_type": "x", "user_id": other}, headers=caller.headers)
    accepted = await track(legacy, admin, "/events", user_id=other)

    assert_problem(refused, 422)
    assert accepted["user_id"] == other


async def test_old_integer_user_ids_are_accepted_as_text(legacy: httpx.AsyncClient) -> None:
    assert (await track(legacy, Caller("admin"), user_id=42))["user_id"] == "42"


async def test_metrics_are_recorded_and_listed_newest_first(legacy: httpx.AsyncClient) -> None:
    caller = Caller()
    metric = {"metric_name": "api_calls", "metric_value": 1, "service_name": "web", "endpoint": "/login"}

    one = await legacy.post("/analytics/metrics", json=metric, headers=caller.headers)
    batch = await legacy.post(
        "/analytics/metrics/batch",
        json={"metrics": [{**metric, "metric_value": 2}, {**metric, "metric_value": 3, "metric_type": "gauge"}]},
        headers=caller.headers,
    )
    listed = await legacy.get("/analytics/metrics?metric_name=api_calls&limit=10", headers=caller.headers)
    other = await legacy.get("/analytics/metrics?metric_name=nothing", headers=caller.headers)

    assert one.status_code == 200, one.text
    assert set(one.json()) == METRIC_FIELDS
    assert (one.json()["metric_name"], one.json()["metric_value"], one.json()["metric_type"]) == (
        "api_calls",
        1,
        "counter",
    )
    assert_deprecated(one, f"{ANALYTICS}/metrics")
    assert batch.status_code == 200, batch.text
    assert batch.json() == {"message": "Created 2 metrics successfully"}
    assert listed.status_code == 200, listed.text
    assert listed.json()["count"] == 3
    timestamps = [item["timestamp"] for item in listed.json()["metrics"]]
    assert timestamps == sorted(timestamps, reverse=True)
    assert {item["metric_value"] for item in listed.json()["metrics"]} == {1, 2, 3}
    assert other.json() == {"metrics": [], "count": 0}


async def test_a_number_sent_as_text_is_still_accepted_as_the_older_service_did(legacy: httpx.AsyncClient) -> None:
    """The platform's own routes refuse "5" for a number (422); the legacy ones convert it, as
    pydantic did for the clients written against them."""
    caller = Caller()
    metric = {"metric_name": "as_text", "metric_value": "5", "service_name": "web"}

    response = await legacy.post("/analytics/metrics", json=metric, headers=caller.headers)
    listed = await legacy.get("/analytics/metrics?metric_name=as_text", headers=caller.headers)

    assert response.status_code == 200, response.text
    assert response.json()["metric_value"] == 5
    assert [item["metric_value"] for item in listed.json()["metrics"]] == [5]


async def test_a_metric_without_a_value_is_422(legacy: httpx.AsyncClient) -> None:
    response = await legacy.post("/analytics/metrics", json={"metric_name": "x"}, headers=Caller().headers)

    assert_problem(response, 422)


@pytest.mark.parametrize("path", ["/analytics/usage/{id}", "/usage/{id}"])
async def test_usage_answers_a_list_per_period(legacy: httpx.AsyncClient, path: str) -> None:
    caller = Caller()
    for tokens, cost in ((100, 0.5), (50, 0.25)):
        response = await legacy.post("/events", json=llm_usage(tokens, cost), headers=caller.headers)
        assert response.status_code == 200, response.text

    daily = await legacy.get(path.format(id=caller.id), headers=caller.headers)
    monthly = await legacy.get(path.format(id=caller.id) + "?period_type=monthly&days=7", headers=caller.headers)

    assert daily.status_code == 200, daily.text
    today = [item for item in daily.json() if item["tokens_used"]]
    assert len(today) == 1
    assert today[0]["user_id"] == caller.id
    assert (today[0]["tokens_used"], today[0]["cost_usd"], today[0]["period_type"]) == (150, 0.75, "daily")
    assert set(today[0]) == {"user_id", "api_calls_count", "tokens_used", "cost_usd", "date", "period_type"}
    assert monthly.status_code == 200, monthly.text
    assert sum(item["tokens_used"] for item in monthly.json()) == 150
    assert {item["period_type"] for item in monthly.json()} == {"monthly"}
    assert_deprecated(daily, f"{ANALYTICS}/usage/{{user_id}}")


async def test_another_users_usage_and_costs_are_for_admins_only(legacy: httpx.AsyncClient) -> None:
    caller, other, admin = Caller(), Caller(), Caller("admin")
    await legacy.post("/events", json=llm_usage(10, 0.1), headers=other.headers)

    assert_problem(await legacy.get(f"/usage/{other.id}", headers=caller.headers), 403)
    assert_problem(await legacy.get(f"/costs?user_id={other.id}", headers=caller.headers), 403)
    seen = await legacy.get(f"/usage/{other.id}", headers=admin.headers)
    assert seen.status_code == 200, seen.text
    assert sum(item["tokens_used"] for item in seen.json()) == 10


@pytest.mark.parametrize("path", ["/analytics/costs", "/costs"])
async def test_costs_answer_the_summary_breakdown_and_period(legacy: httpx.AsyncClient, path: str) -> None:
    ada, bob, admin = Caller(), Caller(), Caller("admin")
    await legacy.post("/events", json=llm_usage(100, 1.0), headers=ada.headers)
    await legacy.post("/events", json=llm_usage(300, 2.0), headers=bob.headers)

    mine = await legacy.get(path, headers=ada.headers)
    everyone = await legacy.get(path + "?days=7", headers=admin.headers)

    assert mine.status_code == 200, mine.text
    assert set(mine.json()) == {"summary", "user_breakdown", "period"}
    assert mine.json()["summary"]["total_cost_usd"] == 1.0
    assert mine.json()["summary"]["total_tokens"] == 100
    assert mine.json()["summary"]["period_days"] == 30
    assert [user["user_id"] for user in mine.json()["user_breakdown"]] == [ada.id]
    assert set(mine.json()["period"]) == {"start_date", "end_date"}
    summary = everyone.json()["summary"]
    assert (summary["total_cost_usd"], summary["total_tokens"], summary["period_days"]) == (3.0, 400, 7)
    assert summary["cost_per_token"] == pytest.approx(3.0 / 400)
    breakdown = {user["user_id"]: user["total_cost"] for user in everyone.json()["user_breakdown"]}
    assert breakdown == {ada.id: 1.0, bob.id: 2.0}
    assert_deprecated(mine, f"{ANALYTICS}/costs")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/analytics/events"),
        ("POST", "/events"),
        ("POST", "/analytics/metrics"),
        ("POST", "/analytics/metrics/batch"),
        ("GET", "/analytics/metrics"),
        ("GET", "/analytics/usage/1"),
        ("GET", "/usage/1"),
        ("GET", "/analytics/costs"),
        ("GET", "/costs"),
        ("GET", "/analytics/dashboard"),
    ],
)
async def test_every_analytics_route_refuses_a_wrong_api_key_and_a_missing_token(
    legacy: httpx.AsyncClient, method: str, path: str
) -> None:
    caller = Caller("admin")
    wrong_key = {**caller.headers, "X-API-Key": "wrong"}
    no_token = {"X-API-Key": API_KEY}

    refused = await legacy.request(method, path, json={}, headers=wrong_key)
    anonymous = await legacy.request(method, path, json={"event_type": "x"}, headers=no_token)

    assert_problem(refused, 401, "invalid-api-key")
    assert_problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


async def test_bad_query_parameters_are_422_naming_the_parameter(legacy: httpx.AsyncClient) -> None:
    caller = Caller()

    for path, parameter in (
        (f"/usage/{caller.id}?period_type=hourly", "period_type"),
        ("/costs?days=0", "days"),
        ("/analytics/metrics?limit=100000", "limit"),
    ):
        problem = assert_problem(await legacy.get(path, headers=caller.headers), 422)
        assert problem["errors"][0]["key"] == parameter


async def test_legacy_calls_count_as_api_calls_in_the_callers_usage(legacy: httpx.AsyncClient) -> None:
    caller = Caller()
    for _ in range(3):
        await track(legacy, caller)

    async def three_calls_counted() -> bool:
        usage = await legacy.get(f"/usage/{caller.id}", headers=caller.headers)
        return sum(item["api_calls_count"] for item in usage.json()) >= 3

    # The gateway's usage records reach analytics through the Redis stream a moment later.
    await eventually(three_calls_counted, "the usage records of the legacy calls")
