"""The gateway's pipelined script call (gateway/transport/redis_script.py): the same replies as redis-py's
script object, EVAL on NOSCRIPT, redis-py's exceptions on failure, one connection for concurrent
calls, and a new connection after a timeout or a lost one."""

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis as redis_sync
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.ratelimit import _SCRIPT, Policy, RateLimiter
from gateway.transport.redis_script import PipelinedScript, pack
from tests.private_servers import PrivateRedis

ECHO = "return {KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    yield redis
    await redis.aclose()


@pytest.fixture
async def own_client(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    """A client of a redis-server of the test's own: SCRIPT FLUSH empties every script of a server,
    so it is never sent to the shared one."""
    redis = Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    yield redis
    await redis.aclose()


def test_pack_encodes_like_redis_py() -> None:
    assert pack(b"EVALSHA", "k", 2, 0.5, 6e-05) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$1\r\nk\r\n$1\r\n2\r\n$3\r\n0.5\r\n$5\r\n6e-05\r\n"
    )
    with pytest.raises(RedisError):
        pack(True)


def test_only_plain_tcp_takes_the_fast_path() -> None:
    assert PipelinedScript.for_client(Redis.from_url("redis://127.0.0.1:6379/0"), ECHO) is not None
    assert PipelinedScript.for_client(Redis.from_url("rediss://127.0.0.1:6379/0"), ECHO) is None
    assert PipelinedScript.for_client(Redis.from_url("unix:///tmp/redis.sock"), ECHO) is None


async def test_same_replies_as_redis_py_and_eval_on_noscript(client: Redis, redis_namespace: str) -> None:
    # A script text of this test's own: its SHA is unknown to Redis, so the first call gets NOSCRIPT.
    script = ECHO + f" -- {secrets.token_hex(8)}"
    fast = PipelinedScript.for_client(client, script)
    assert fast is not None
    try:
        key = f"{redis_namespace}:echo"
        args = [6e-05, "text", 1763830000]
        assert await fast(keys=[key], args=args) == await client.register_script(script)(keys=[key], args=args)
        assert await fast(keys=[key], args=args) == [key.encode(), b"6e-05", b"text", 1763830000]
    finally:
        await fast.aclose()


async def test_a_kept_command_is_evaluated_again_after_redis_loses_its_scripts(
    own_client: Redis, redis_namespace: str
) -> None:
    """The rate limiter packs a client's call once and sends the same bytes again; after a
    SCRIPT FLUSH (or a Redis restart) those bytes get NOSCRIPT and must be sent as EVAL."""
    script = ECHO + f" -- {secrets.token_hex(8)}"
    client = own_client
    fast = PipelinedScript.for_client(client, script)
    assert fast is not None
    key = f"{redis_namespace}:echo"
    command = fast.pack([key], [6e-05, "text", 1763830000])
    expected = [key.encode(), b"6e-05", b"text", 1763830000]
    try:
        assert await fast.call_packed(command) == expected  # NOSCRIPT, then EVAL
        assert await fast.call_packed(command) == expected  # EVALSHA
        await client.script_flush()
        assert await fast.call_packed(command) == expected
    finally:
        await fast.aclose()


async def test_the_limiter_keeps_counting_one_client_across_a_script_flush(
    own_client: Redis, private_redis: PrivateRedis, redis_namespace: str
) -> None:
    client = own_client
    limiter = RateLimiter(Redis.from_url(private_redis.url, socket_timeout=1), redis_namespace)
    policy = Policy("kept", limit=10, window=60, burst=10)
    try:
        remaining = [(await limiter.hit("203.0.113.9", policy)).remaining for _ in range(3)]
        await client.script_flush()
        remaining += [(await limiter.hit("203.0.113.9", policy)).remaining for _ in range(2)]
        assert remaining == [9, 8, 7, 6, 5]
        assert not limiter.degraded
    finally:
        await limiter.aclose()
        assert limiter.redis is not None
        await limiter.redis.aclose()


async def test_the_rate_limit_script_answers_alike(client: Redis, redis_namespace: str) -> None:
    fast = PipelinedScript.for_client(client, _SCRIPT)
    assert fast is not None
    slow = client.register_script(_SCRIPT)
    keys = [f"{redis_namespace}:rl:a", *(f"{redis_namespace}:revoked:{k}" for k in ("jti:x", "sid:y", "user:z"))]
    other = [f"{redis_namespace}:rl:b", *keys[1:]]
    await client.set(keys[3], "2000000000", px=60_000)  # the user cut-off: every token is revoked
    try:
        for _ in range(4):
            mine = await fast(keys=keys, args=[20_000.0, 20_000.0, 1])
            theirs = await slow(keys=other, args=[20_000.0, 20_000.0, 1])
            # allowed, remaining and revoked alike; the reset/retry times (ms, from Redis TIME) may
            # differ by the milliseconds between the two calls.
            assert [mine[0], mine[1], mine[4]] == [theirs[0], theirs[1], theirs[4]]
            assert all(abs(a - b) <= 50 for a, b in zip(mine[2:4], theirs[2:4], strict=True))
    finally:
        await fast.aclose()


async def test_concurrent_calls_share_one_connection_in_order(client: Redis, redis_namespace: str) -> None:
    fast = PipelinedScript.for_client(client, ECHO)
    assert fast is not None
    try:
        replies = await asyncio.gather(*(fast(keys=[f"{redis_namespace}:k"], args=[i, i, i]) for i in range(200)))
        assert [reply[3] for reply in replies] == list(range(200))
        protocol = fast._protocol
        assert protocol is not None and not protocol.pending
    finally:
        await fast.aclose()


async def test_script_errors_are_response_errors(client: Redis, redis_namespace: str) -> None:
    fast = PipelinedScript.for_client(client, "return redis.error_reply('BENCH broken')")
    assert fast is not None
    try:
        with pytest.raises(ResponseError, match="BENCH broken"):
            await fast(keys=[f"{redis_namespace}:k"], args=[])
        # The connection is still in step afterwards.
        good = PipelinedScript.for_client(client, ECHO)
        assert good is not None
        assert (await good(keys=["k"], args=[1, 2, 3]))[3] == 3
        await good.aclose()
    finally:
        await fast.aclose()


async def test_refused_connection_is_a_redis_connection_error() -> None:
    fast = PipelinedScript("return 1", "127.0.0.1", 1, timeout=0.5)
    with pytest.raises(RedisConnectionError):
        await fast(keys=[], args=[])


async def test_a_silent_server_times_out_and_the_next_call_reconnects() -> None:
    connections: list[asyncio.StreamWriter] = []
    answer = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while data := await reader.read(65536):
            if answer.is_set():
                writer.write(b":7\r\n" * data.count(b"EVALSHA"))

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    # Long enough for the second call's answer on a loaded machine; the first waits it out whole.
    fast = PipelinedScript("return 7", "127.0.0.1", port, timeout=0.5)
    try:
        with pytest.raises(RedisTimeoutError):  # the server holds its answer until told: only the timeout ends this
            await asyncio.wait_for(fast(keys=[], args=[]), 10)
        answer.set()
        assert await fast(keys=[], args=[]) == 7
        assert len(connections) == 2, "the timed-out connection is dropped, a new one opened"
    finally:
        await fast.aclose()
        listener.close()
        for writer in connections:
            writer.close()
        await listener.wait_closed()


async def test_a_lost_connection_fails_pending_calls_then_reconnects(client: Redis, redis_namespace: str) -> None:
    fast = PipelinedScript.for_client(client, ECHO)
    assert fast is not None
    try:
        assert (await fast(keys=["k"], args=[1, 2, 3]))[3] == 3
        protocol = fast._protocol
        assert protocol is not None and protocol.transport is not None
        protocol.transport.abort()
        await asyncio.sleep(0)
        assert (await fast(keys=["k"], args=[1, 2, 4]))[3] == 4
        assert fast._protocol is not protocol
    finally:
        await fast.aclose()


async def test_database_and_password_are_sent_first(redis_url: str, redis_namespace: str) -> None:
    received = bytearray()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
            writer.write(b"+OK\r\n" * (data.count(b"AUTH") + data.count(b"SELECT")))
            writer.write(b":1\r\n" * data.count(b"EVALSHA"))

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://bench:s3cret@127.0.0.1:{port}/3", socket_timeout=1)
    fast = PipelinedScript.for_client(client, "return 1")
    assert fast is not None
    try:
        assert await fast(keys=[], args=[]) == 1
        assert bytes(received).startswith(pack(b"AUTH", "bench", "s3cret") + pack(b"SELECT", 3))
    finally:
        await fast.aclose()
        await client.aclose()
        listener.close()
        await listener.wait_closed()


async def test_the_limiter_uses_it_and_closes_it(redis_url: str, redis_namespace: str) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=0.5)
    limiter = RateLimiter(redis, redis_namespace)
    assert isinstance(limiter._script, PipelinedScript)
    policy = Policy("default", 3, 60, 2)
    try:
        decisions = [await limiter.hit("10.0.0.1", policy) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert [d.remaining for d in decisions] == [1, 0, 0]
        sync = redis_sync.Redis.from_url(redis_url)
        assert sync.exists(f"{redis_namespace}:rl:default:10.0.0.1") == 1
        sync.close()
    finally:
        await limiter.aclose()
        await redis.aclose()
