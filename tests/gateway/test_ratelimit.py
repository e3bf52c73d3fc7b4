"""Per-client rate limiting (RELIABILITY C): conformant headers, 429 problem+json after the quota,
isolation per IP, X-Forwarded-For only from trusted proxies, the stricter auth policy, one limit
shared by every gateway on the same Redis, and per-process limits when Redis is unreachable."""

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis as redis_sync
from litestar import Litestar

from gateway.app import create_app
from gateway.ratelimit import DEGRADED
from shared.settings import SettingsError
from tests.conftest import app_client
from tests.gateway.conftest import (
    AUTH,
    CLOSED_REDIS,
    USERS,
    SettingsFactory,
    access_token,
    assert_problem,
    bearer,
    peer_client,
)
from tests.gateway.echo import Echo
from tests.metrics import forget

SMALL = {"rate_limit_per_minute": 5, "rate_limit_burst": 5}

# RFC 9651: a List of Items; each Item here is a String with Integer parameters.
_SF_STRING = r'"(?P<name>[\x20\x21\x23-\x5b\x5d-\x7e]*)"'
_SF_PARAMS = r"(?P<params>(?:;[a-z*][a-z0-9_\-.*]*=-?[0-9]{1,15})*)"
_SF_ITEM = re.compile(rf"^{_SF_STRING}{_SF_PARAMS}$")


def parse_item(value: str) -> tuple[str, dict[str, int]]:
    """Parse one RFC 9651 Item of the RateLimit headers: a String with Integer parameters."""
    match = _SF_ITEM.match(value)
    assert match, f"not a structured-field item: {value!r}"
    params: dict[str, int] = {}
    for param in match["params"].split(";")[1:]:
        key, _, number = param.partition("=")
        assert key not in params, f"duplicate parameter {key} in {value!r}"
        params[key] = int(number)
    return match["name"], params


def rate_limit(response: httpx.Response) -> dict[str, Any]:
    """The parsed rate-limit headers, checked for conformance."""
    policy_name, policy = parse_item(response.headers["ratelimit-policy"])
    name, current = parse_item(response.headers["ratelimit"])
    assert name == policy_name
    assert set(policy) == {"q", "w"} and set(current) == {"r", "t"}
    assert policy["q"] > 0 and policy["w"] > 0
    assert current["r"] >= 0 and current["t"] >= 0
    assert response.headers["x-ratelimit-limit"] == str(policy["q"])
    assert response.headers["x-ratelimit-remaining"] == str(current["r"])
    assert response.headers["x-ratelimit-reset"] == str(current["t"])
    return {"name": name, **policy, **current}


def assert_quota_exceeded(response: httpx.Response) -> dict[str, Any]:
    assert_problem(response, 429, "quota-exceeded")
    limits = rate_limit(response)
    assert limits["r"] == 0
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= max(1, limits["t"])
    return limits


@pytest.fixture
async def small(make_settings: SettingsFactory, echo: Echo) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    app = create_app(make_settings(**SMALL), services={USERS: echo})
    async with app_client(app, client_ip="127.0.0.2") as client:
        yield app, client


async def test_headers_parse_and_remaining_counts_down_to_a_429(
    small: tuple[Litestar, httpx.AsyncClient], echo: Echo
) -> None:
    _, client = small
    headers = bearer(access_token())
    seen = []
    for _ in range(5):
        response = await client.get(f"{USERS}/me", headers=headers)
        assert response.status_code == 200, response.text
        seen.append(rate_limit(response))
    assert [limits["r"] for limits in seen] == [4, 3, 2, 1, 0]
    assert all(limits["name"] == "default" and limits["q"] == 5 and limits["w"] == 60 for limits in seen)
    assert len(echo.seen) == 5

    for _ in range(3):
        assert_quota_exceeded(await client.get(f"{USERS}/me", headers=headers))
    assert len(echo.seen) == 5, "a request over the quota reached the upstream"


async def test_the_default_policy_counts_in_redis_with_an_expiry(
    client: httpx.AsyncClient, redis_keys: Callable[[], list[str]]
) -> None:
    """The shared limiter answers with the default policy (100/min, burst 20): no fallback."""
    first = rate_limit(await client.get(f"{USERS}/me", headers=bearer(access_token())))
    assert (first["q"], first["w"], first["r"]) == (100, 60, 19)
    second = rate_limit(await client.get(f"{USERS}/me", headers=bearer(access_token())))
    assert second["r"] == 18
    keys = [key for key in redis_keys() if ":rl:" in key]
    assert [key.rsplit(":rl:", 1)[1] for key in keys] == ["default:127.0.0.1"]
    ready = await client.get("/ready")
    assert ready.json()["checks"]["redis"]["status"] == "ok"
    metrics = await client.get("/metrics")
    assert "pyairtable_gateway_ratelimit_degraded 0.0" in metrics.text


async def test_every_rate_limit_key_expires(
    small: tuple[Litestar, httpx.AsyncClient], redis_url: str, redis_keys: Callable[[], list[str]]
) -> None:
    _, client = small
    for _ in range(7):
        await client.get(f"{USERS}/me", headers=bearer(access_token()))
    await client.post(f"{AUTH}/login")  # no auth upstream mounted: a 404 after admission
    keys = [key for key in redis_keys() if ":rl:" in key]
    assert keys
    connection = redis_sync.Redis.from_url(redis_url)
    try:
        for key in keys:
            assert 0 < connection.pttl(key) <= 6 * 60_000, f"{key} has no sensible expiry"
    finally:
        connection.close()


async def test_one_client_over_its_quota_does_not_limit_another(
    small: tuple[Litestar, httpx.AsyncClient], echo: Echo
) -> None:
    app, abuser = small
    headers = bearer(access_token())
    for _ in range(5):
        assert (await abuser.get(f"{USERS}/me", headers=headers)).status_code == 200
    assert_quota_exceeded(await abuser.get(f"{USERS}/me", headers=headers))

    async with peer_client(app, "127.0.0.3") as neighbour:
        for expected in (4, 3, 2):
            response = await neighbour.get(f"{USERS}/me", headers=headers)
            assert response.status_code == 200, response.text
            assert rate_limit(response)["r"] == expected
    assert_quota_exceeded(await abuser.get(f"{USERS}/me", headers=headers))


@pytest.mark.parametrize(
    "spoof",
    [
        {"X-Forwarded-For": "10.9.8.7"},
        {"X-Forwarded-For": "1.1.1.1, 2.2.2.2, 3.3.3.3"},
        {"X-Real-IP": "10.9.8.7"},
        {"Forwarded": "for=10.9.8.7"},
        {"X-Forwarded-For": "127.0.0.3"},
    ],
    ids=["xff", "xff-chain", "x-real-ip", "forwarded", "xff-another-client"],
)
async def test_forwarding_headers_from_an_untrusted_peer_are_ignored(
    small: tuple[Litestar, httpx.AsyncClient], echo: Echo, spoof: dict[str, str]
) -> None:
    _, client = small
    for number in range(5):
        headers = {**bearer(access_token()), **{k: v.replace("7", str(number)) for k, v in spoof.items()}}
        assert (await client.get(f"{USERS}/me", headers=headers)).status_code == 200
    assert_quota_exceeded(await client.get(f"{USERS}/me", headers={**bearer(access_token()), **spoof}))
    assert {seen.header_values("x-forwarded-for")[0] for seen in echo.seen} == {"127.0.0.2"}


async def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    app = create_app(make_settings(trusted_proxies="127.0.0.9", **SMALL), services={USERS: echo})
    headers = bearer(access_token())
    async with app_client(app, client_ip="127.0.0.9") as proxy:
        for spoofed_left in ("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4", "5.5.5.5"):
            chain = {"X-Forwarded-For": f"{spoofed_left}, 10.0.0.1, 127.0.0.9"}
            assert (await proxy.get(f"{USERS}/me", headers={**headers, **chain})).status_code == 200
        assert {seen.header_values("x-forwarded-for")[0] for seen in echo.seen} == {"10.0.0.1"}
        over = await proxy.get(f"{USERS}/me", headers={**headers, "X-Forwarded-For": "9.9.9.9, 10.0.0.1"})
        assert_quota_exceeded(over)
        other = await proxy.get(f"{USERS}/me", headers={**headers, "X-Forwarded-For": "10.0.0.1, 10.0.0.2"})
        assert other.status_code == 200
        assert rate_limit(other)["r"] == 4
        # An untrusted peer's X-Forwarded-For is still ignored on the same gateway.
        async with peer_client(app, "127.0.0.4") as direct:
            response = await direct.get(f"{USERS}/me", headers={**headers, "X-Forwarded-For": "10.0.0.2"})
            assert rate_limit(response)["r"] == 4
            assert echo.seen[-1].header_values("x-forwarded-for") == ["127.0.0.4"]


async def test_register_login_and_refresh_have_the_stricter_auth_policy(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    auth_echo = Echo(AUTH)
    settings = make_settings(auth_rate_limit_per_minute=3, auth_rate_limit_burst=3, **SMALL)
    app = create_app(settings, services={AUTH: auth_echo, USERS: echo})
    async with app_client(app) as client:
        counts = []
        for path in ("login", "register", "refresh"):
            response = await client.post(f"{AUTH}/{path}", json={})
            assert response.status_code == 200, response.text
            limits = rate_limit(response)
            assert (limits["name"], limits["q"]) == ("auth", 3)
            counts.append(limits["r"])
        assert counts == [2, 1, 0]
        assert_quota_exceeded(await client.post(f"{AUTH}/login", json={}))
        assert len(auth_echo.seen) == 3
        # The default policy is a separate budget.
        response = await client.get(f"{USERS}/me", headers=bearer(access_token()))
        assert response.status_code == 200
        assert rate_limit(response)["name"] == "default"
        protected = await client.get(f"{AUTH}/me", headers=bearer(access_token()))
        assert rate_limit(protected)["name"] == "default"


async def test_two_gateways_on_one_redis_share_one_limit(make_settings: SettingsFactory) -> None:
    first_echo, second_echo = Echo(USERS), Echo(USERS)
    first = create_app(make_settings(**SMALL), services={USERS: first_echo})
    second = create_app(make_settings(**SMALL), services={USERS: second_echo})
    headers = bearer(access_token())
    async with app_client(first) as one, app_client(second) as two:
        remaining = []
        for client in (one, two, one, two, one):
            response = await client.get(f"{USERS}/me", headers=headers)
            assert response.status_code == 200, response.text
            remaining.append(rate_limit(response)["r"])
        assert remaining == [4, 3, 2, 1, 0]
        assert_quota_exceeded(await two.get(f"{USERS}/me", headers=headers))
        assert_quota_exceeded(await one.get(f"{USERS}/me", headers=headers))
    assert len(first_echo.seen) == 3 and len(second_echo.seen) == 2


async def test_with_redis_unreachable_requests_succeed_and_per_process_limits_apply(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    settings = make_settings(redis_url=CLOSED_REDIS, auth_rate_limit_per_minute=2, auth_rate_limit_burst=2, **SMALL)
    auth_echo = Echo(AUTH)
    app = create_app(settings, services={AUTH: auth_echo, USERS: echo})
    headers = bearer(access_token())
    forget(DEGRADED)
    async with app_client(app) as client:
        for expected in (4, 3, 2, 1, 0):
            response = await client.get(f"{USERS}/me", headers=headers)
            assert response.status_code == 200, response.text
            assert rate_limit(response)["r"] == expected
        assert_quota_exceeded(await client.get(f"{USERS}/me", headers=headers))
        assert len(echo.seen) == 5
        # Auth endpoints stay limited, never unlimited.
        for _ in range(2):
            assert (await client.post(f"{AUTH}/login", json={})).status_code == 200
        assert_quota_exceeded(await client.post(f"{AUTH}/login", json={}))

        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert ready.json()["checks"]["redis"]["status"] == "degraded"
        assert ready.json()["checks"]["upstream:users"]["status"] == "ok"
        metrics = await client.get("/metrics")
        assert "pyairtable_gateway_ratelimit_degraded 1.0" in metrics.text


async def test_embedded_mode_without_redis_still_limits(make_settings: SettingsFactory, echo: Echo) -> None:
    settings = make_settings(redis_url="", auth_rate_limit_per_minute=2, auth_rate_limit_burst=2, **SMALL)
    app = create_app(settings, services={AUTH: Echo(AUTH), USERS: echo})
    headers = bearer(access_token())
    async with app_client(app) as client:
        assert [rate_limit(await client.get(f"{USERS}/me", headers=headers))["r"] for _ in range(5)] == [4, 3, 2, 1, 0]
        assert_quota_exceeded(await client.get(f"{USERS}/me", headers=headers))
        # Each policy is its own budget: an exhausted default one leaves sign-in open, and back.
        assert [rate_limit(await client.post(f"{AUTH}/login", json={}))["r"] for _ in range(2)] == [1, 0]
        assert_quota_exceeded(await client.post(f"{AUTH}/register", json={}))
        assert_quota_exceeded(await client.get(f"{USERS}/me", headers=headers))
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert "redis" not in ready.json()["checks"]
    assert len(echo.seen) == 5


async def test_requests_with_bad_tokens_are_rate_limited_too(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(rate_limit_per_minute=5, rate_limit_burst=5), services={USERS: Echo(USERS)})
    async with app_client(app) as client:
        statuses = [
            (await client.get(f"{USERS}/x", headers={"Authorization": f"Bearer guess.{i}.x"})).status_code
            for i in range(8)
        ]

    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429] * 3


# -- one address, one key (issue 11, item 5) -------------------------------------------------------


async def spend(app: Litestar, proxy: httpx.AsyncClient, client_ips: list[str], proxied: bool = True) -> list[int]:
    """One request from each address in turn, through the trusted ``proxy`` (X-Forwarded-For) or as
    the peer itself: the statuses. The app's lifespan must be running."""
    statuses = []
    for ip in client_ips:
        if proxied:
            headers = {**bearer(access_token()), "X-Forwarded-For": ip}
            statuses.append((await proxy.get(f"{USERS}/me", headers=headers)).status_code)
        else:
            async with peer_client(app, ip) as peer:
                statuses.append((await peer.get(f"{USERS}/me", headers=bearer(access_token()))).status_code)
    return statuses


ONE_IPV6_FOUR_WAYS = ["2001:db8::1", "2001:DB8::1", "2001:db8:0:0:0:0:0:1", "2001:0db8:0000::0001"]


@pytest.mark.parametrize(
    "spellings",
    [
        ["192.0.2.7", "::ffff:192.0.2.7", "::FFFF:192.0.2.7", "0:0:0:0:0:ffff:c000:0207"],
        ONE_IPV6_FOUR_WAYS,
    ],
    ids=["ipv4-and-its-mapped-forms", "one-ipv6-address-four-ways"],
)
@pytest.mark.parametrize("proxied", [False, True], ids=["peer", "x-forwarded-for"])
async def test_one_address_however_written_has_one_budget(
    make_settings: SettingsFactory, echo: Echo, spellings: list[str], proxied: bool
) -> None:
    app = create_app(make_settings(trusted_proxies="127.0.0.9", **SMALL), services={USERS: echo})
    async with app_client(app, client_ip="127.0.0.9") as proxy:
        statuses = await spend(app, proxy, [*spellings, *spellings], proxied)
    assert statuses == [200] * 5 + [429] * 3, statuses
    # Upstreams see the one canonical spelling too.
    assert {seen.header_values("x-forwarded-for")[0] for seen in echo.seen} == {spellings[0].lower()}


async def test_ten_addresses_of_one_ipv6_64_share_one_budget_and_another_64_has_its_own(
    make_settings: SettingsFactory, echo: Echo, redis_keys: Callable[[], list[str]]
) -> None:
    app = create_app(make_settings(trusted_proxies="127.0.0.9", **SMALL), services={USERS: echo})
    async with app_client(app, client_ip="127.0.0.9") as proxy:
        one_64 = await spend(app, proxy, [f"2001:db8:1:2::{n:x}" for n in range(1, 11)])
        neighbour = await spend(app, proxy, ["2001:db8:1:3::1"])
    assert one_64 == [200] * 5 + [429] * 5, one_64
    assert neighbour == [200]
    limited = sorted(key.rsplit(":rl:", 1)[1] for key in redis_keys() if ":rl:" in key)
    assert limited == ["default:2001:db8:1:2::/64", "default:2001:db8:1:3::/64"]
    # The upstream still learns each client's own address.
    assert echo.seen[0].header_values("x-forwarded-for") == ["2001:db8:1:2::1"]


async def test_the_ipv6_prefix_is_a_setting(make_settings: SettingsFactory, echo: Echo) -> None:
    app = create_app(
        make_settings(trusted_proxies="127.0.0.9", rate_limit_ipv6_prefix=128, **SMALL), services={USERS: echo}
    )
    async with app_client(app, client_ip="127.0.0.9") as proxy:
        statuses = await spend(app, proxy, [f"2001:db8:1:2::{n:x}" for n in range(1, 11)])
    assert statuses == [200] * 10


@pytest.mark.parametrize("prefix", [0, 129, -1])
def test_an_impossible_ipv6_prefix_is_refused_at_start_up(make_settings: SettingsFactory, prefix: int) -> None:
    with pytest.raises(SettingsError, match="RATE_LIMIT_IPV6_PREFIX"):
        make_settings(rate_limit_ipv6_prefix=prefix)


async def test_a_trusted_proxy_reaching_us_over_ipv6_mapped_ipv4_is_still_trusted(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    """A dual-stack socket reports an IPv4 peer as ``::ffff:a.b.c.d``: still the configured proxy."""
    app = create_app(make_settings(trusted_proxies="10.0.0.0/8", **SMALL), services={USERS: echo})
    async with app_client(app, client_ip="::ffff:10.1.2.3") as proxy:
        response = await proxy.get(f"{USERS}/me", headers={**bearer(access_token()), "X-Forwarded-For": "198.51.100.4"})
    assert response.status_code == 200
    assert echo.seen[0].header_values("x-forwarded-for") == ["198.51.100.4"]


async def test_the_mailing_routes_share_the_stricter_auth_policy(make_settings: SettingsFactory, echo: Echo) -> None:
    auth_echo = Echo(AUTH)
    settings = make_settings(auth_rate_limit_per_minute=4, auth_rate_limit_burst=4, **SMALL)
    app = create_app(settings, services={AUTH: auth_echo, USERS: echo})
    async with app_client(app) as client:
        counts = []
        for path in ("password/forgot", "password/reset", "email/verify", "email/verify/resend"):
            response = await client.post(f"{AUTH}/{path}", json={})
            assert response.status_code == 200, response.text
            limits = rate_limit(response)
            assert (limits["name"], limits["q"]) == ("auth", 4)
            counts.append(limits["r"])
        assert counts == [3, 2, 1, 0]
        assert_quota_exceeded(await client.post(f"{AUTH}/password/forgot", json={}))
        assert len(auth_echo.seen) == 4


async def test_keyed_by_user_one_user_shares_a_budget_across_addresses_and_users_have_their_own(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    app = create_app(make_settings(rate_limit_key="user", **SMALL), services={USERS: echo})
    ada, grace = bearer(access_token()), bearer(access_token())
    async with app_client(app, client_ip="198.51.100.1") as office, peer_client(app, "203.0.113.7") as phone:
        ada_counts = [rate_limit(await c.get(f"{USERS}/me", headers=ada))["r"] for c in (office, phone, office, phone)]
        grace_first = rate_limit(await office.get(f"{USERS}/me", headers=grace))["r"]
        assert rate_limit(await phone.get(f"{USERS}/me", headers=ada))["r"] == 0
        assert_quota_exceeded(await office.get(f"{USERS}/me", headers=ada))
        assert_quota_exceeded(await phone.get(f"{USERS}/me", headers=ada))
        # Without a (valid) token there is no user: the address's own budget, untouched so far.
        anonymous = [(await office.get(f"{USERS}/me")).status_code for _ in range(5)]
        assert_quota_exceeded(await office.get(f"{USERS}/me"))
    assert ada_counts == [4, 3, 2, 1], "one budget for the user, whichever address"
    assert grace_first == 4, "another user behind the same address has a budget of her own"
    assert anonymous == [401] * 5
