"""The gateway's circuit breakers measure the upstream, not the request (issue 12, item 3).

Upstreams here are real TCP servers on loopback (``Upstream``, scripted by path) that a test can
stop and start again on the same port, break (every connection reset) and repair:

* only transport failures (refused, reset, timed out, closed mid-answer) count; any answer a live
  service gives, its fast 503s included, is passed on and never opens the breaker;
* every way a half-open probe can end leaves the breaker able to serve again;
* while the breaker is open the gateway asks the upstream's ``/ready`` itself, so a service that
  comes back is used again at once instead of after the open period;
* ``/ready`` reports each upstream's real state, breaker included, and is 503 when no upstream
  can be reached, while ``/health`` stays 200.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.errors import BodyTimeout, CircuitOpen, PayloadTooLarge, UpstreamUnavailable
from gateway.proxy import ForwardRequest, HTTPUpstream, RequestBody, ResponseStarted
from gateway.transport.breaker import CircuitBreaker
from tests.conftest import app_client, eventually
from tests.gateway.conftest import USERS, SettingsFactory, access_token, assert_problem, bearer, raw_request
from tests.gateway.loopback import LoopbackServer

THINGS = "/api/v1/things"
BILLING = "/api/v1/billing"
UNAVAILABLE = b'{"type":"/problems/database-unavailable","status":503,"code":"database-unavailable"}'
INTERNAL_ERROR = b'{"type":"/problems/internal-error","status":500,"code":"internal-error"}'


class Upstream(LoopbackServer):
    """An HTTP/1.1 server: ``/ready`` answers ``ready_status``; ``<prefix>/unavailable`` a fast 503
    problem, ``<prefix>/internal-error`` a 500 one; ``<prefix>/mid-answer`` a head and part of the
    body, then the connection closes; anything else 200 ``ok``. ``broken``: every connection is
    closed unanswered (a reset); ``hang()``: requests are read and left unanswered until
    ``release()`` (a hung process)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[str] = []
        self.ready_status = 200
        self.broken = False
        self.answering = asyncio.Event()
        self.answering.set()

    def requests(self) -> int:
        """Arrivals other than the gateway's own ``/ready`` probes."""
        return sum(path != "/ready" for path in self.arrivals)

    def hang(self) -> None:
        self.answering.clear()

    def release(self) -> None:
        self.answering.set()

    async def stop(self) -> None:
        self.release()
        await super().stop()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            while not self.broken and await self.answer_one(reader, writer):
                pass

    async def answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        if self.broken:
            return False
        path = head.split(" ", 2)[1].partition("?")[0]
        await self.skip_body(reader, head.lower())
        self.arrivals.append(path)
        await self.answering.wait()
        if path == "/ready":
            status = self.ready_status
            writer.write(b"HTTP/1.1 %d Ready?\r\ncontent-length: 2\r\n\r\n{}" % status)
        elif path.endswith("/unavailable"):
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n"
                b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%b" % (len(UNAVAILABLE), UNAVAILABLE)
            )
        elif path.endswith("/internal-error"):
            writer.write(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/problem+json\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(INTERNAL_ERROR), INTERNAL_ERROR)
            )
        elif path.endswith("/mid-answer"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            return False
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return True

    @staticmethod
    async def skip_body(reader: asyncio.StreamReader, head: str) -> None:
        if "transfer-encoding: chunked" in head:
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                await reader.readexactly(size + 2)
            await reader.readexactly(2)
        elif "content-length: " in head:
            await reader.readexactly(int(head.split("content-length: ", 1)[1].split("\r\n", 1)[0]))


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[], Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def start() -> Upstream:
        started.append(await Upstream().start())
        return started[-1]

    yield start
    for upstream in started:
        await upstream.stop()


def gateway_settings(make_settings: SettingsFactory, **overrides: Any) -> Any:
    generous = {"rate_limit_per_minute": 10_000, "rate_limit_burst": 10_000, "breaker_failures": 3}
    return make_settings(**{**generous, **overrides})


async def breaker_metric(client: httpx.AsyncClient, name: str, upstream: str = "users") -> float:
    text = (await client.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{upstream="{upstream}"}}'))
    return float(line.rsplit(" ", 1)[1])


def assert_relayed_unavailable(answer: httpx.Response) -> None:
    """The service's own fast 503, passed on as it sent it (not the gateway's circuit-open one)."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "database-unavailable"
    assert answer.headers["retry-after"] == "1"


LIVE_ANSWERS = {"unavailable": (503, "database-unavailable"), "internal-error": (500, "internal-error")}


# -- what counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(LIVE_ANSWERS))
async def test_a_live_services_5xx_answers_are_passed_on_and_never_open_the_breaker(
    make_settings: SettingsFactory, upstreams: Callable[[], Awaitable[Upstream]], path: str
) -> None:
    """A fast 503 (its database is down) or a 500 some client's input caused (issue 11: five of
    those took a whole route offline): the service is there, so its answers are passed on."""
    users = await upstreams()
    app = create_app(gateway_settings(make_settings), proxied={USERS: users.url})
    status, code = LIVE_ANSWERS[path]
    async with app_client(app) as client:
        client.headers.update(bearer(access_token()))
        for _ in range(10):
            answer = await client.get(f"{USERS}/{path}")
            assert (answer.status_code, answer.json()["code"]) == (status, code)
        assert users.arrivals == [f"{USERS}/{path}"] * 10
        assert (await client.get(f"{USERS}/cached")).status_code == 200
        assert await breaker_metric(client, "pyairtable_gateway_upstream_breaker_state") == 0
        assert await breaker_metric(client, "pyairtable_gateway_upstream_breaker_opened_total") == 0


@pytest.mark.parametrize("failure", ["refused", "reset", "timed out", "closed mid-answer"])
async def test_transport_failures_open_the_breaker_only_for_that_upstream(
    make_settings: SettingsFactory, upstreams: Callable[[], Awaitable[Upstream]], failure: str
) -> None:
    users, things = await upstreams(), await upstreams()
    app = create_app(gateway_settings(make_settings), proxied={USERS: users.url, THINGS: things.url})
    path = f"{USERS}/mid-answer" if failure == "closed mid-answer" else f"{USERS}/x"
    async with app_client(app) as client:
        client.headers.update(bearer(access_token()))
        if failure == "refused":
            await users.stop()
        elif failure == "reset":
            users.broken = True
        elif failure == "timed out":
            users.hang()  # REQUEST_TIMEOUT is 0.5 s here
        for _ in range(3):
            if failure == "closed mid-answer":  # a raw ASGI call: httpx refuses an answer cut short
                token = access_token().encode()
                cut = await raw_request(app, path.encode(), headers=[(b"authorization", b"Bearer " + token)])
                assert (cut.status_code, cut.content) == (200, b"partial")
            elif failure == "timed out":
                assert_problem(await client.get(path), 504, "upstream-timeout")
            else:
                assert_problem(await client.get(path), 502, "upstream-unavailable")
        arrived = users.requests()
        refused = await client.get(f"{USERS}/x")
        if failure != "closed mid-answer":  # its /ready answers: the gateway's probe may have closed it already
            assert_problem(refused, 503, "upstream-circuit-open")
            assert refused.headers["retry-after"] == "1"  # the gateway itself looks again within a second
            assert users.requests() == arrived, "a request was let through to an open breaker"
            assert await breaker_metric(client, "pyairtable_gateway_upstream_breaker_state") == 2
        assert await breaker_metric(client, "pyairtable_gateway_upstream_breaker_opened_total") == 1
        assert (await client.get(f"{THINGS}/x")).status_code == 200  # other routes unaffected

        # Repaired: the gateway notices by itself and the route serves again.
        if failure == "refused":
            await users.start()
        users.broken, users.ready_status = False, 200
        users.release()

        async def serves() -> bool:
            return (await client.get(f"{USERS}/x")).status_code == 200

        await eventually(serves, "the users route to serve again")


async def test_a_service_that_comes_back_is_found_by_the_gateways_own_probe(
    make_settings: SettingsFactory, upstreams: Callable[[], Awaitable[Upstream]]
) -> None:
    """The open period here is a minute; the service is used again as soon as it answers its
    ``/ready``, and no client request had to be the probe."""
    users = await upstreams()
    settings = gateway_settings(make_settings, breaker_reset_seconds=60)
    app = create_app(settings, proxied={USERS: users.url})
    async with app_client(app) as client:
        client.headers.update(bearer(access_token()))
        await users.stop()
        for _ in range(3):
            assert_problem(await client.get(f"{USERS}/x"), 502)
        assert_problem(await client.get(f"{USERS}/x"), 503, "upstream-circuit-open")

        users.ready_status = 503  # listening, not ready yet: any answer shows it is there
        await users.start()

        async def closed() -> bool:
            return await breaker_metric(client, "pyairtable_gateway_upstream_breaker_state") == 0

        await eventually(closed, "the gateway's probe to close the breaker")
        assert users.arrivals == ["/ready"]
        assert_relayed_unavailable(await client.get(f"{USERS}/unavailable"))
        assert (await client.get(f"{USERS}/x")).status_code == 200
        assert users.arrivals == ["/ready", f"{USERS}/unavailable", f"{USERS}/x"]


# -- every way a half-open probe ends ---------------------------------------------------------


def probe_request(path: str, body: RequestBody | None = None) -> ForwardRequest:
    method = "GET" if body is None else "POST"
    return ForwardRequest(method, USERS + path, [], "127.0.0.1", "http", "testserver", "req-probe", body)


async def discard(message: Any) -> None:
    pass


def chunked_body(receive: Callable[[], Awaitable[Any]], timeout: float | None = None) -> RequestBody:
    """A body without a length, of at most 1,000 bytes, each piece awaited at most ``timeout``."""
    return RequestBody(receive, 1000, None, timeout)


async def one_big_chunk() -> Any:
    return {"type": "http.request", "body": b"x" * 2000, "more_body": True}


async def client_gone() -> Any:
    return {"type": "http.disconnect"}


async def nothing_more() -> Any:
    await asyncio.sleep(60)


PROBES: dict[str, tuple[Callable[[], ForwardRequest], type[BaseException] | None, str]] = {
    # ending: (the probe, how forwarding it ends, the breaker's state right after it)
    "success": (lambda: probe_request("/x"), None, "closed"),
    "transport failure": (lambda: probe_request("/x"), UpstreamUnavailable, "open"),
    "closed mid-answer": (lambda: probe_request("/mid-answer"), ResponseStarted, "open"),
    "client disconnect": (lambda: probe_request("/x", chunked_body(client_gone)), asyncio.CancelledError, "half-open"),
    "body too large (413)": (lambda: probe_request("/x", chunked_body(one_big_chunk)), PayloadTooLarge, "half-open"),
    "body timeout (408)": (lambda: probe_request("/x", chunked_body(nothing_more, 0.05)), BodyTimeout, "half-open"),
}


@pytest.mark.parametrize("ending", list(PROBES))
async def test_every_way_a_half_open_probe_ends_resolves_it(
    upstreams: Callable[[], Awaitable[Upstream]], ending: str
) -> None:
    users = await upstreams()
    breaker = CircuitBreaker(1, 10, first_open_seconds=0.5, name="users")  # no background probe here
    proxy = HTTPUpstream("users", users.url, 10, 1.0, 1.0, breaker, retry_idempotent=False)
    make_probe, raised, state_after = PROBES[ending]
    try:
        users.broken = True
        with pytest.raises(UpstreamUnavailable):
            await proxy.forward(probe_request("/x"), discard, [])
        with pytest.raises(CircuitOpen):
            await proxy.forward(probe_request("/x"), discard, [])
        await eventually(lambda: breaker.state == "half-open", "the open period to pass")
        users.broken = ending == "transport failure"

        with pytest.raises(raised) if raised is not None else contextlib.nullcontext():
            await proxy.forward(make_probe(), discard, [])
        assert breaker.state == state_after
        if state_after == "open":
            assert breaker.open_seconds == 1.0, "a failed probe waits twice as long before the next"
        users.broken = False

        async def serves() -> bool:
            try:
                return await proxy.forward(probe_request("/x"), discard, []) == 200
            except CircuitOpen:
                return False

        await eventually(serves, "a request to be let through again")
        assert breaker.state == "closed"
    finally:
        proxy.close()


# -- /ready and /health -----------------------------------------------------------------------


async def test_ready_reports_each_upstreams_real_state_and_stays_ready_while_one_answers(
    make_settings: SettingsFactory, upstreams: Callable[[], Awaitable[Upstream]]
) -> None:
    users, things, billing = await upstreams(), await upstreams(), await upstreams()
    billing.ready_status = 503
    proxied = {USERS: users.url, THINGS: things.url, BILLING: billing.url}
    app = create_app(gateway_settings(make_settings), proxied=proxied)
    async with app_client(app) as client:
        client.headers.update(bearer(access_token()))
        await users.stop()
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["upstream:things"] == {"status": "ok", "error": None}
        assert checks["upstream:billing"]["status"] == "degraded"
        assert checks["upstream:billing"]["error"].startswith("not ready (answered 503)")
        assert checks["upstream:users"]["status"] == "degraded"
        assert "unreachable (ConnectFailed), breaker closed" in checks["upstream:users"]["error"]

        for _ in range(3):
            await client.get(f"{USERS}/x")
        users_check = (await client.get("/ready")).json()["checks"]["upstream:users"]
        assert "breaker open" in users_check["error"]
        assert (await client.get(f"{BILLING}/unavailable")).status_code == 503  # billing's own answers pass


async def test_ready_is_503_when_no_upstream_can_be_reached_and_health_stays_200(
    make_settings: SettingsFactory, upstreams: Callable[[], Awaitable[Upstream]]
) -> None:
    users, things = await upstreams(), await upstreams()
    app = create_app(gateway_settings(make_settings), proxied={USERS: users.url, THINGS: things.url})
    async with app_client(app) as client:
        await users.stop()
        await things.stop()
        ready = await client.get("/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "unavailable"
        checks = ready.json()["checks"]
        assert {checks[f"upstream:{name}"]["status"] for name in ("users", "things")} == {"fail"}
        assert checks["redis"]["status"] == "ok"
        assert (await client.get("/health")).status_code == 200

        await things.start()
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["upstream:users"]["status"] == "degraded"
