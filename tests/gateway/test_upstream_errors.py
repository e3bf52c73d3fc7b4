"""In-process upstream failures: a crash, a failing handler or a slow answer becomes a problem+json
response in bounded time, never a hang, and leaves the gateway serving."""

import asyncio

import httpx

from gateway.app import create_app
from tests.conftest import app_client
from tests.gateway.conftest import USERS, SettingsFactory, access_token, assert_problem, bearer
from tests.gateway.echo import Echo
from tests.metrics import sample

# A ceiling far above request_timeout (0.5 s): it only turns a hang into a failure.
HANG_GUARD_SECONDS = 10
REQUESTS = "pyairtable_gateway_requests_total"
TIMEOUT_SERIES = {"method": "GET", "route": f"{USERS}/*", "status": "504"}


async def test_an_in_process_upstream_that_crashes_before_answering_gives_an_internal_error_problem(
    client: httpx.AsyncClient, echo: Echo
) -> None:
    # In one process (the embedded mode) the upstream's exception is the platform's own 500; over
    # HTTP an upstream that drops the connection is a 502 (tests/gateway/test_http1.py).
    response = await asyncio.wait_for(client.get(f"{USERS}/crash", headers=bearer(access_token())), HANG_GUARD_SECONDS)
    assert_problem(response, 500, "internal-error")
    assert "crashed" not in response.text, "the upstream's exception leaked to the client"
    assert len(echo.seen) == 1
    after = await client.get(f"{USERS}/me", headers=bearer(access_token()))
    assert after.status_code == 200


async def test_an_upstream_handler_error_is_relayed_as_its_problem(client: httpx.AsyncClient) -> None:
    response = await asyncio.wait_for(
        client.get(f"{USERS}/handler-error", headers=bearer(access_token())), HANG_GUARD_SECONDS
    )
    assert_problem(response, 500, "internal-error")
    assert "handler failed" not in response.text


async def test_a_slow_upstream_is_a_504_problem(make_settings: SettingsFactory) -> None:
    echo = Echo(USERS, slow_seconds=60)
    app = create_app(make_settings(request_timeout=0.5), services={USERS: echo})
    async with app_client(app) as client:
        timeouts_before = sample((await client.get("/metrics")).text, REQUESTS, **TIMEOUT_SERIES)
        response = await asyncio.wait_for(
            client.get(f"{USERS}/slow", headers=bearer(access_token())), HANG_GUARD_SECONDS
        )
        assert_problem(response, 504, "upstream-timeout")
        assert response.json()["instance"] == f"{USERS}/slow"
        # The gateway still serves, and the fast route of the same upstream still answers.
        after = await client.get(f"{USERS}/me", headers=bearer(access_token()))
        assert after.status_code == 200
        timeouts_after = sample((await client.get("/metrics")).text, REQUESTS, **TIMEOUT_SERIES)
        assert timeouts_after == timeouts_before + 1, "the 504 is counted under the route template"
