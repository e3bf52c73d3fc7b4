"""The gateway's HTTP/1.1 upstream client (gateway/transport/http1.py) against a real TCP server on loopback
that answers in the ways real upstreams do: Content-Length, chunked, until close, 100 Continue,
HEAD, hop-by-hop headers, a pooled connection closed under our feet, no answer in time, garbage.

The server (``RawUpstream``) is a plain asyncio server scripted by path; it records every request
(connection number, request line, headers, body as received on the wire) so tests can check
framing and connection reuse."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app
from gateway.proxy import ForwardRequest, HTTPUpstream, ResponseStarted
from gateway.transport.breaker import CircuitBreaker
from tests.conftest import app_client
from tests.gateway.conftest import USERS, SettingsFactory, access_token, assert_problem, bearer
from tests.gateway.loopback import LoopbackServer, next_head, serving

HANG_GUARD_SECONDS = 10
CHUNKS = [b"first-", b"second-" * 100, b"third"]


class Arrival:
    def __init__(self, connection: int, line: str, headers: list[tuple[str, str]], body: bytes, chunked: bool) -> None:
        self.connection = connection
        self.method, self.target, _ = line.split(" ", 2)
        self.headers = headers
        self.body = body
        self.chunked = chunked

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


class RawUpstream(LoopbackServer):
    """An HTTP/1.1 server with one behaviour per path (see ``respond``)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[Arrival] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        served = 0
        while (head := await next_head(reader)) is not None:
            line, *fields = head.decode("latin-1").split("\r\n")[:-2]
            headers = [(name.lower(), value.strip()) for name, _, value in (f.partition(":") for f in fields)]
            arrival = Arrival(number, line, headers, b"", False)
            arrival.body, arrival.chunked = await self.read_body(reader, arrival)
            self.arrivals.append(arrival)
            served += 1
            if not await self.respond(arrival, writer, served):
                return

    async def read_body(self, reader: asyncio.StreamReader, arrival: Arrival) -> tuple[bytes, bool]:
        if arrival.header("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return body, True
                body += chunk[:-2]
        length = int(arrival.header("content-length") or 0)
        return await reader.readexactly(length), False

    async def respond(self, arrival: Arrival, writer: asyncio.StreamWriter, served: int) -> bool:
        """Answer; False closes the connection."""
        path = arrival.target.partition("?")[0].removeprefix(USERS)
        if path == "/echo":
            body = f'{{"sha256":"{hashlib.sha256(arrival.body).hexdigest()}","length":{len(arrival.body)}}}'.encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body)
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for chunk in CHUNKS:
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + b"".join(CHUNKS))
            await writer.drain()
            return False
        elif path == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
        elif path == "/hop":
            writer.write(
                b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nkeep-alive: timeout=5\r\n"
                b"x-secret: hop-only\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok"
            )
        elif path == "/drop-when-reused" and served > 1:
            return False  # a keep-alive connection closed by the upstream just as a request arrived
        elif path == "/slow-head":
            await asyncio.sleep(3)
            return False
        elif path == "/slow-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(3)
            return False
        elif path == "/garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        else:
            body = b"" if arrival.method == "HEAD" else b"plain"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + body)
        await writer.drain()
        return True


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    async with serving(RawUpstream()) as server:
        yield server


@pytest.fixture
async def proxied(make_settings: SettingsFactory, upstream: RawUpstream) -> AsyncIterator[httpx.AsyncClient]:
    app: Litestar = create_app(
        make_settings(rate_limit_per_minute=10_000, rate_limit_burst=10_000, max_body_size=100_000),
        proxied={USERS: upstream.url},
    )
    async with app_client(app) as client:
        client.headers.update(bearer(access_token()))
        yield client


async def get(client: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
    method = kwargs.pop("method", "GET")
    return await asyncio.wait_for(client.request(method, USERS + path, **kwargs), HANG_GUARD_SECONDS)


async def test_keep_alive_connections_are_reused(proxied: httpx.AsyncClient, upstream: RawUpstream) -> None:
    for _ in range(5):
        response = await get(proxied, "/plain")
        assert (response.status_code, response.content) == (200, b"plain")
    assert upstream.connections == 1
    assert [arrival.header("host") for arrival in upstream.arrivals] == [upstream.url.removeprefix("http://")] * 5


async def test_a_chunked_response_arrives_whole_and_the_connection_is_kept(
    proxied: httpx.AsyncClient, upstream: RawUpstream
) -> None:
    response = await get(proxied, "/chunked")
    assert response.status_code == 200
    assert response.content == b"".join(CHUNKS)
    assert (await get(proxied, "/plain")).content == b"plain"
    assert upstream.connections == 1


async def test_a_response_delimited_by_close_arrives_whole(proxied: httpx.AsyncClient, upstream: RawUpstream) -> None:
    response = await get(proxied, "/until-close")
    assert (response.status_code, response.content) == (200, b"".join(CHUNKS))
    assert (await get(proxied, "/plain")).content == b"plain"
    assert upstream.connections == 2  # that connection could not be reused


async def test_request_bodies_keep_their_framing(proxied: httpx.AsyncClient, upstream: RawUpstream) -> None:
    payload = bytes(range(256)) * 300
    sized = await get(proxied, "/echo", method="POST", content=payload)
    assert sized.json() == {"sha256": hashlib.sha256(payload).hexdigest(), "length": len(payload)}

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7000):
            yield payload[start : start + 7000]

    chunked = await get(proxied, "/echo", method="PUT", content=pieces())
    assert chunked.json() == sized.json()
    first, second = upstream.arrivals
    assert (first.header("content-length"), first.chunked) == (str(len(payload)), False)
    assert (second.header("content-length"), second.chunked) == (None, True)


async def test_a_body_over_the_limit_is_a_413_even_when_chunked(
    proxied: httpx.AsyncClient, upstream: RawUpstream
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"x" * 10_000

    assert_problem(await get(proxied, "/echo", method="POST", content=pieces()), 413)
    assert (await get(proxied, "/plain")).status_code == 200  # the gateway still serves that upstream


async def test_informational_responses_are_skipped(proxied: httpx.AsyncClient) -> None:
    response = await get(proxied, "/continue", method="POST", content=b"x", headers={"Expect": "100-continue"})
    assert (response.status_code, response.content) == (201, b"done")


async def test_a_head_response_has_no_body_and_the_next_request_is_not_confused(proxied: httpx.AsyncClient) -> None:
    head = await get(proxied, "/plain", method="HEAD")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "5")
    assert (await get(proxied, "/plain")).content == b"plain"


async def test_hop_by_hop_response_headers_are_removed(proxied: httpx.AsyncClient) -> None:
    response = await get(proxied, "/hop")
    assert response.headers["x-kept"] == "yes"
    assert "x-secret" not in response.headers and "keep-alive" not in response.headers
    assert response.headers.get("connection") != "keep-alive, x-secret"


async def test_a_pooled_connection_closed_by_the_upstream_is_retried_for_a_get_only(
    proxied: httpx.AsyncClient, upstream: RawUpstream
) -> None:
    assert (await get(proxied, "/plain")).status_code == 200
    retried = await get(proxied, "/drop-when-reused")
    assert (retried.status_code, retried.content) == (200, b"plain")
    assert [a.connection for a in upstream.arrivals] == [1, 1, 2]  # dropped on 1, answered on a new one

    assert (await get(proxied, "/plain")).status_code == 200
    assert_problem(await get(proxied, "/drop-when-reused", method="POST", content=b"{}"), 502)


async def test_no_head_in_time_is_a_504_and_garbage_a_502(proxied: httpx.AsyncClient) -> None:
    assert_problem(await get(proxied, "/slow-head"), 504, "upstream-timeout")
    assert_problem(await get(proxied, "/garbage"), 502, "upstream-unavailable")
    assert (await get(proxied, "/plain")).status_code == 200


async def test_a_connection_refused_is_a_502(make_settings: SettingsFactory, upstream: RawUpstream) -> None:
    url = upstream.url
    await upstream.stop()
    app = create_app(make_settings(), proxied={USERS: url})
    async with app_client(app) as client:
        assert_problem(await get(client, "/plain", headers=bearer(access_token())), 502, "upstream-unavailable")
    await upstream.start()  # the fixture stops it again


async def test_concurrent_requests_wait_for_a_free_connection(
    make_settings: SettingsFactory, upstream: RawUpstream
) -> None:
    app = create_app(make_settings(upstream_pool_size=1, rate_limit_burst=100), proxied={USERS: upstream.url})
    async with app_client(app) as client:
        client.headers.update(bearer(access_token()))
        responses = await asyncio.gather(*(get(client, "/chunked") for _ in range(4)))
    assert [r.content for r in responses] == [b"".join(CHUNKS)] * 4
    assert upstream.connections == 1


async def test_a_body_that_stalls_after_the_head_ends_the_response_early(upstream: RawUpstream) -> None:
    breaker = CircuitBreaker(5, 10)
    proxy = HTTPUpstream("users", upstream.url, 10, 1.0, 0.3, breaker, retry_idempotent=True)
    request = ForwardRequest("GET", f"{USERS}/slow-body", [], "127.0.0.1", "http", "testserver", "req-1", None)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    try:
        with pytest.raises(ResponseStarted):
            await asyncio.wait_for(proxy.forward(request, send, []), HANG_GUARD_SECONDS)
    finally:
        proxy.close()
    assert sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"partial"
    assert request.response_bytes == len(b"partial")
    assert not any(m.get("more_body") is False for m in sent[1:]), "the response must not look complete"


async def test_the_response_bytes_relayed_are_counted(upstream: RawUpstream) -> None:
    proxy = HTTPUpstream("users", upstream.url, 10, 1.0, 5.0, CircuitBreaker(5, 10), retry_idempotent=True)

    async def discard(message: Any) -> None:
        pass

    try:
        for path, size in (("/chunked", len(b"".join(CHUNKS))), ("/plain", len(b"plain"))):
            request = ForwardRequest("GET", USERS + path, [], "127.0.0.1", "http", "testserver", "req-2", None)
            assert await asyncio.wait_for(proxy.forward(request, discard, []), HANG_GUARD_SECONDS) == 200
            assert request.response_bytes == size
    finally:
        proxy.close()
