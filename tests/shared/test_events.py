"""Events between services: Redis Streams with consumer groups, the in-memory bus, the outbox."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sqlalchemy import select

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from auth_service.models import outbox, processed_events
from shared.db import create_engine, create_sessionmaker
from shared.events import Event, InMemoryBus, RedisStreamBus, idempotent, new_event
from shared.outbox import OutboxRelay, add_event
from shared.streams import StreamFull
from tests.auth_service.conftest import PASSWORD, register
from tests.conftest import WAIT_SECONDS, app_client, eventually
from tests.metrics import local_exposition, local_sample
from tests.private_servers import PrivateRedis, private_redis
from tests.user_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    Caller,
    clean_users_database,
    profile_url,
    user_settings,
    users_database,
)
from user_service.app import create_app as create_users_app
from user_service.config import UserSettings

HANDLED = "pyairtable_events_handled_total"
PUBLISHED = "pyairtable_outbox_published_total"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Recorder:
    """A handler that remembers what it got; optionally fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.handled: list[Event] = []
        self.arrived = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.calls += 1
        self.arrived.set()
        if self.calls <= self.failures:
            raise RuntimeError("the handler's dependency is down")
        self.handled.append(event)


async def pending(redis: Redis, stream: str, group: str) -> int:
    return int((await redis.xpending(stream, group))["pending"])


async def all_acknowledged(redis: Redis, stream: str, group: str) -> bool:
    return await pending(redis, stream, group) == 0


def registered(user_id: str | None = None) -> Event:
    return new_event("user.registered", "auth", {"user_id": user_id or str(uuid.uuid4()), "email": "ada@example.com"})


@contextlib.asynccontextmanager
async def consuming(bus: RedisStreamBus, handler: "Recorder") -> AsyncIterator[None]:
    """``bus`` started with ``handler`` on user.registered for the group "users"; closed afterwards."""
    bus.subscribe("user.registered", "users", handler)
    await bus.start()
    try:
        yield
    finally:
        await bus.close()


# -- Redis Streams ---------------------------------------------------------------------------------


async def test_redis_bus_delivers_to_the_group_and_acknowledges(redis: Redis, redis_namespace: str) -> None:
    bus = RedisStreamBus(redis, redis_namespace, consumer="users-1")
    handler = Recorder()
    async with consuming(bus, handler):
        event = registered()
        await bus.publish(event)
        await eventually(lambda: handler.handled, "the handler to get the event")
        assert handler.handled == [event]
        stream = bus.stream("user.registered")
        assert stream == f"{redis_namespace}:events:user.registered"
        await eventually(lambda: all_acknowledged(redis, stream, "users"), "the acknowledgement")


async def test_events_published_before_the_consumer_starts_are_delivered(redis: Redis, redis_namespace: str) -> None:
    publisher = RedisStreamBus(redis, redis_namespace)
    early = registered()
    await publisher.publish(early)
    consumer = RedisStreamBus(redis, redis_namespace)
    handler = Recorder()
    async with consuming(consumer, handler):
        await eventually(lambda: handler.handled, "the early event")
        assert handler.handled == [early]


async def test_a_failing_handler_leaves_the_message_pending(redis: Redis, redis_namespace: str) -> None:
    bus = RedisStreamBus(redis, redis_namespace, consumer="users-1")
    handler = Recorder(failures=1)
    async with consuming(bus, handler):
        await bus.publish(registered())
        await asyncio.wait_for(handler.arrived.wait(), WAIT_SECONDS)
    assert handler.handled == []
    assert await pending(redis, bus.stream("user.registered"), "users") == 1


async def test_a_message_whose_handler_failed_is_delivered_again(redis: Redis, redis_namespace: str) -> None:
    """At least once: a handler that fails once (its database was down, say) gets the event again."""
    bus = RedisStreamBus(redis, redis_namespace, consumer="users-1", reclaim_after_seconds=0.2)
    handler = Recorder(failures=1)
    async with consuming(bus, handler):
        event = registered()
        await bus.publish(event)
        await eventually(lambda: handler.handled, "the redelivery")
        assert handler.handled == [event]
        assert handler.calls == 2
        stream = bus.stream("user.registered")
        await eventually(lambda: all_acknowledged(redis, stream, "users"), "the acknowledgement")


async def test_messages_of_a_consumer_that_died_are_taken_over(redis: Redis, redis_namespace: str) -> None:
    bus = RedisStreamBus(redis, redis_namespace, consumer="users-2", reclaim_after_seconds=0.2)
    stream = bus.stream("user.registered")
    event = registered()
    await bus.publish(event)
    await redis.xgroup_create(stream, "users", id="0", mkstream=True)
    # users-1 reads the message and dies before acknowledging it.
    taken = await redis.xreadgroup("users", "users-1", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 1
    handler = Recorder()
    async with consuming(bus, handler):
        await eventually(lambda: handler.handled, "the takeover")
        assert handler.handled == [event]
        await eventually(lambda: all_acknowledged(redis, stream, "users"), "the acknowledgement")


async def test_each_group_gets_every_event_once(redis: Redis, redis_namespace: str) -> None:
    bus = RedisStreamBus(redis, redis_namespace)
    users, analytics = Recorder(), Recorder()
    bus.subscribe("user.registered", "users", users)
    bus.subscribe("user.registered", "analytics", analytics)
    await bus.start()
    try:
        first, second = registered(), registered()
        await bus.publish(first)
        await bus.publish(second)
        await eventually(lambda: len(users.handled) == 2 and len(analytics.handled) == 2, "both")
        assert users.handled == [first, second]
        assert analytics.handled == [first, second]
    finally:
        await bus.close()


async def test_consumers_of_one_group_share_the_work(redis: Redis, redis_namespace: str) -> None:
    """While one consumer of a group is busy with an event, the next event goes to the other one;
    each event is handled once by the group."""
    one = RedisStreamBus(redis, redis_namespace, consumer="a")
    two = RedisStreamBus(redis, redis_namespace, consumer="b")
    release = asyncio.Event()
    handled_by: dict[str, list[str]] = {"a": [], "b": []}

    def busy_until_released(consumer: str) -> Callable[[Event], Awaitable[None]]:
        async def handle(event: Event) -> None:
            handled_by[consumer].append(event.id)
            await release.wait()

        return handle

    one.subscribe("user.registered", "users", busy_until_released("a"))
    two.subscribe("user.registered", "users", busy_until_released("b"))
    await one.start()
    await two.start()
    try:
        first, second = registered(), registered()
        await one.publish(first)
        await eventually(lambda: handled_by["a"] or handled_by["b"], "the first event taken")
        await one.publish(second)  # the consumer holding the first is busy: the other takes it
        await eventually(lambda: handled_by["a"] and handled_by["b"], "the second event taken by the other")
        release.set()
        await eventually(lambda: all_acknowledged(redis, one.stream("user.registered"), "users"), "the acks")
        assert sorted(handled_by["a"] + handled_by["b"]) == sorted([first.id, second.id])
        assert len(handled_by["a"]) == len(handled_by["b"]) == 1
    finally:
        release.set()
        await one.close()
        await two.close()


async def test_only_subscribed_types_are_delivered(redis: Redis, redis_namespace: str) -> None:
    bus = RedisStreamBus(redis, redis_namespace)
    deleted = Recorder()
    bus.subscribe("user.deleted", "auth", deleted)
    await bus.start()
    try:
        await bus.publish(registered())
        gone = new_event("user.deleted", "users", {"user_id": str(uuid.uuid4())})
        await bus.publish(gone)
        await eventually(lambda: deleted.handled, "the user.deleted event")
        assert deleted.handled == [gone]
    finally:
        await bus.close()


def groups_recreated(event_type: str, group: str) -> float:
    labels = {"stream": event_type, "group": group}
    return REGISTRY.get_sample_value("pyairtable_stream_groups_recreated_total", labels) or 0.0


async def publish_when_redis_answers(bus: RedisStreamBus, event: Event) -> bool:
    with contextlib.suppress(RedisError):
        await bus.publish(event)
        return True
    return False


@contextlib.asynccontextmanager
async def events_across(
    fault: Callable[[PrivateRedis], Awaitable[None]], what: str, socket_timeout: float
) -> AsyncIterator[tuple[Redis, RedisStreamBus]]:
    """An event handled before ``fault`` (done to a private Redis) and one published after it are
    both handled, in order; then the caller checks more with the bus's client and the bus."""
    with private_redis() as server:
        client = Redis.from_url(server.url, socket_timeout=socket_timeout)
        bus = RedisStreamBus(client, "fault", consumer="users-1")
        handler = Recorder()
        try:
            async with consuming(bus, handler):
                before = registered()
                await bus.publish(before)
                await eventually(lambda: handler.handled, f"the event before the {what}")

                await fault(server)
                after = registered()
                await eventually(lambda: publish_when_redis_answers(bus, after), f"a publish after the {what}")

                await eventually(lambda: len(handler.handled) == 2, f"the event after the {what}")
                assert handler.handled == [before, after]
                yield client, bus
        finally:
            await client.aclose()


async def test_the_bus_goes_on_by_itself_after_redis_restarts_empty() -> None:
    async def restart_empty(server: PrivateRedis) -> None:
        server.kill()
        server.start()  # empty: no stream, no group

    async with events_across(restart_empty, "restart", socket_timeout=2) as (client, bus):
        stream = bus.stream("user.registered")
        await eventually(lambda: all_acknowledged(client, stream, "users"), "the acknowledgement")


async def test_the_bus_goes_on_by_itself_after_redis_hangs_and_resumes() -> None:
    async def hang_and_resume(server: PrivateRedis) -> None:
        server.hang()  # SIGSTOP: connections stay open, nothing answers
        await asyncio.sleep(2.0)  # the consumer's blocking read times out meanwhile
        server.resume()

    # A socket timeout above the one-second blocking read, as the services' consumer client has.
    async with events_across(hang_and_resume, "hang", socket_timeout=1.5):
        pass


async def test_accounts_registered_after_redis_restarts_empty_get_their_profiles(
    auth_settings: AuthSettings,
    user_settings: UserSettings,  # noqa: F811
) -> None:
    """The auth → users bus end to end (outbox, relay, stream, consumer group, profile), with no
    service restarted: Redis killed and started again empty between two registrations."""
    admin = Caller(roles=["admin", "user"])
    with private_redis() as server:
        auth_app = create_auth_app(msgspec.structs.replace(auth_settings, redis_url=server.url))
        users_app = create_users_app(msgspec.structs.replace(user_settings, redis_url=server.url))
        async with app_client(auth_app) as auth, app_client(users_app) as users:

            async def registered_once(email: str) -> dict[str, Any] | None:
                response = await auth.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
                return response.json()["user"] if response.status_code == 201 else None

            async def profile(user: dict[str, Any]) -> bool:
                response = await users.get(profile_url(uuid.UUID(user["id"])), headers=admin.headers)
                return response.status_code == 200

            before = await eventually(lambda: registered_once("before@example.com"), "a registration")
            await eventually(lambda: profile(before), "the profile of the account registered before")

            server.kill()
            server.start()  # empty: streams, consumer groups and revocations are gone

            after = await eventually(lambda: registered_once("after@example.com"), "a registration after")
            await eventually(lambda: profile(after), "the profile of the account registered after")


async def test_a_group_lost_under_a_running_consumer_is_created_again_and_said_so(
    redis: Redis, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    group = f"users-{uuid.uuid4().hex[:6]}"
    bus = RedisStreamBus(redis, redis_namespace)
    handler = Recorder()
    bus.subscribe("user.registered", group, handler)
    await bus.start()
    try:
        await bus.publish(registered())
        await eventually(lambda: handler.handled, "the first event")
        recreated_before = groups_recreated("user.registered", group)

        await redis.delete(bus.stream("user.registered"))  # what a Redis restarted empty has lost
        later = registered()
        await bus.publish(later)

        await eventually(lambda: len(handler.handled) == 2, "the event published after the loss")
        assert handler.handled[1] == later
        assert groups_recreated("user.registered", group) == recreated_before + 1
        assert any("consumer group created again" in r.getMessage() for r in caplog.records)
    finally:
        await bus.close()


async def test_events_every_group_acknowledged_are_trimmed_and_the_others_are_kept(
    redis: Redis, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.events.LAG_REFRESH_SECONDS", 0.0)
    bus = RedisStreamBus(redis, redis_namespace)
    stream = bus.stream("user.registered")
    await redis.xgroup_create(stream, "laggard", id="0", mkstream=True)  # a group that reads nothing yet
    handler = Recorder()
    async with consuming(bus, handler):
        for _ in range(5):
            await bus.publish(registered())
        await eventually(lambda: len(handler.handled) == 5, "all five")
        await eventually(lambda: all_acknowledged(redis, stream, "users"), "the acknowledgements")
        await asyncio.sleep(0.2)  # a few trimming rounds
        assert await redis.xlen(stream) == 5  # the laggard has read none of them: nothing trimmed

        await redis.xgroup_destroy(stream, "laggard")

        async def trimmed() -> bool:
            return bool(await redis.xlen(stream) == 1)  # only the last delivered one stays

        await eventually(trimmed, "the acknowledged events to be trimmed")


async def test_one_relay_pass_sends_a_batch_oldest_first_and_marks_it_published(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis
) -> None:
    sessionmaker, relay, bus = relay_parts
    events = [registered() for _ in range(5)]
    async with sessionmaker() as session, session.begin():
        for event in reversed(events):  # written newest first: the stream must still read oldest first
            await add_event(session, outbox, event)

    assert await relay.publish_pending() == 5

    assert [e.id for e in await stream_events(redis, bus.stream("user.registered"))] == [e.id for e in events]
    async with sessionmaker() as session:
        published = (await session.execute(select(outbox.c.published_at, outbox.c.attempts))).all()
    assert len(published) == 5 and all(at is not None and attempts == 1 for at, attempts in published)
    assert await relay.publish_pending() == 0  # nothing is sent twice


async def test_a_full_stream_refuses_an_event_and_the_outbox_keeps_it_until_there_is_room(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.events.LAG_REFRESH_SECONDS", 0.0)
    sessionmaker, relay, bus = relay_parts
    stream = bus.stream("user.registered")
    # Events of ~5 KB: each takes a stream node of its own, which trimming frees.
    events = [registered(user_id=str(uuid.uuid4()) + "x" * 5000) for _ in range(3)]
    for event in events:
        async with sessionmaker() as session, session.begin():
            await add_event(session, outbox, event)
        with contextlib.suppress(StreamFull):
            await relay.publish_pending()
        if await redis.xlen(stream) == 2:
            bus.max_bytes = int(await redis.memory_usage(stream) or 0) + 1000  # full: no group read them

    # The third event is refused: nothing the (absent) groups have not read is trimmed for it.
    assert [e.id for e in await stream_events(redis, stream)] == [e.id for e in events[:2]]
    async with sessionmaker() as session:
        unpublished = (await session.execute(select(outbox.c.id).where(outbox.c.published_at.is_(None)))).scalars()
        assert [str(event_id) for event_id in unpublished] == [events[2].id]  # kept in the outbox

    consumer = RedisStreamBus(redis, bus.namespace)
    handler = Recorder()
    async with consuming(consumer, handler):
        await eventually(lambda: len(handler.handled) == 2, "the two on the stream")

        async def room() -> bool:
            return bool(await redis.xlen(stream) == 1)  # acknowledged, so trimmed

        await eventually(room, "the acknowledged events to be trimmed")
        assert await relay.publish_pending() == 1
        await eventually(lambda: len(handler.handled) == 3, "the event the outbox kept")
        assert [e.id for e in handler.handled] == [e.id for e in events]


# -- in memory -------------------------------------------------------------------------------------


async def test_in_memory_bus_gives_the_same_outcome() -> None:
    bus = InMemoryBus(retry_delay_seconds=0.01)
    users, analytics, broken = Recorder(), Recorder(), Recorder(failures=1)
    bus.subscribe("user.registered", "users", users)
    bus.subscribe("user.registered", "analytics", analytics)
    bus.subscribe("user.registered", "broken", broken)
    await bus.start()
    event = registered()
    await bus.publish(event)
    await bus.publish(new_event("user.deleted", "users", {}))
    await bus.close()  # waits for the deliveries in flight
    assert users.handled == [event]
    assert analytics.handled == [event]
    assert broken.handled == [event]  # its failure did not stop the others, and it was retried
    assert broken.calls == 2
    assert bus.dead_letters == []


# -- the outbox ------------------------------------------------------------------------------------


def outbox_rows(database_url: str, event_type: str = "user.registered") -> list[dict[str, Any]]:
    """The outbox's rows of one event type (a registration also adds the first membership's)."""
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        cursor.execute("SELECT * FROM outbox WHERE event_type = %s ORDER BY occurred_at", (event_type,))
        return list(cursor.fetchall())


async def stream_events(redis: Redis, stream: str) -> list[Event]:
    entries = await redis.xrange(stream)
    return [msgspec.json.decode(fields[b"event"], type=Event) for _, fields in entries]


async def test_registering_publishes_user_registered_through_the_outbox(
    client: httpx.AsyncClient, auth_settings: AuthSettings, redis: Redis
) -> None:
    tokens = await register(client)
    user_id = tokens["user"]["id"]
    stream = f"{auth_settings.redis_namespace}:events:user.registered"

    published = await eventually(lambda: stream_events(redis, stream), "user.registered on the stream")
    [event] = published
    assert event.type == "user.registered"
    assert event.source == "auth"
    assert event.data["user_id"] == user_id
    assert event.data["email"] == "ada@example.com"
    assert not any("password" in key for key in event.data)

    async def row_published() -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(outbox_rows, auth_settings.database_url)
        return rows if rows and rows[0]["published_at"] is not None else []

    [row] = await eventually(row_published, "the outbox row to be marked published")
    assert str(row["id"]) == event.id
    assert row["payload"]["user_id"] == user_id

    duplicate = await client.post("/api/v1/auth/register", json={"email": "ada@example.com", "password": "x" * 20})
    assert duplicate.status_code == 409
    assert len(await asyncio.to_thread(outbox_rows, auth_settings.database_url)) == 1


@pytest.fixture
async def relay_parts(
    auth_settings: AuthSettings, redis: Redis
) -> AsyncIterator[tuple[Any, OutboxRelay, RedisStreamBus]]:
    engine = create_engine(auth_settings)
    sessionmaker = create_sessionmaker(engine)
    bus = RedisStreamBus(redis, auth_settings.redis_namespace)
    relay = OutboxRelay(sessionmaker, outbox, bus, poll_seconds=3600)
    yield sessionmaker, relay, bus
    await relay.stop()
    await engine.dispose()


class FailingOnce:
    """The bus, except that its ``fail_at``-th publish raises (Redis went away mid-batch)."""

    def __init__(self, bus: RedisStreamBus, fail_at: int) -> None:
        self.bus, self.fail_at, self.calls = bus, fail_at, 0

    async def publish(self, event: Event) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RedisConnectionError("connection lost")
        await self.bus.publish(event)


async def test_a_batch_that_fails_mid_publish_stays_pending_and_is_published_on_the_next_pass(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis
) -> None:
    """At least once: what was sent before the failure is sent again, nothing is lost, and the
    relay's loop (one pass a second) gets there by itself."""
    sessionmaker, _, bus = relay_parts
    flaky = FailingOnce(bus, fail_at=2)
    relay = OutboxRelay(sessionmaker, outbox, flaky, poll_seconds=0.05)  # type: ignore[arg-type]
    events = [registered() for _ in range(3)]
    async with sessionmaker() as session, session.begin():
        for event in events:
            await add_event(session, outbox, event)
    failures_before = local_sample("pyairtable_outbox_relay_failures_total")

    relay.start()
    try:
        await eventually(lambda: all_published(sessionmaker), "every row marked published")
    finally:
        await relay.stop()
    published = [e.id for e in await stream_events(redis, bus.stream("user.registered"))]
    assert published == [events[0].id] + [e.id for e in events], "the first again, then all three in order"
    assert local_sample("pyairtable_outbox_relay_failures_total") == failures_before + 1


async def all_published(sessionmaker: Any) -> bool:
    async with sessionmaker() as session:
        rows = await session.execute(select(outbox.c.id).where(outbox.c.published_at.is_(None)))
        return not rows.all()


async def test_relay_publishes_events_left_unpublished(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis
) -> None:
    sessionmaker, relay, bus = relay_parts
    events = [registered(), registered()]
    async with sessionmaker() as session, session.begin():
        for event in events:
            await add_event(session, outbox, event)

    assert await relay.publish_pending() == 2
    assert [e.id for e in await stream_events(redis, bus.stream("user.registered"))] == [e.id for e in events]
    assert await relay.publish_pending() == 0  # published once, not again
    async with sessionmaker() as session:
        published_at = (await session.execute(select(outbox.c.published_at))).scalars().all()
    assert len(published_at) == 2 and all(value is not None for value in published_at)


async def test_a_rolled_back_transaction_publishes_nothing(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis
) -> None:
    sessionmaker, relay, bus = relay_parts
    async with sessionmaker() as session:
        await add_event(session, outbox, registered())
        await session.rollback()
    with pytest.raises(RuntimeError):
        async with sessionmaker() as session, session.begin():
            await add_event(session, outbox, registered())
            raise RuntimeError("the change failed")

    assert await relay.publish_pending() == 0
    assert await redis.xlen(bus.stream("user.registered")) == 0
    async with sessionmaker() as session:
        assert (await session.execute(select(outbox.c.id))).all() == []


async def test_a_running_relay_publishes_soon_after_commit(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis
) -> None:
    """The commit wakes the relay: it does not wait for its next poll (an hour away here)."""
    sessionmaker, relay, bus = relay_parts
    relay.start()
    await asyncio.sleep(0.1)  # let its first, empty, pass finish
    event = registered()
    async with sessionmaker() as session, session.begin():
        await add_event(session, outbox, event)
    published = await eventually(lambda: stream_events(redis, bus.stream("user.registered")), "the publication")
    assert [e.id for e in published] == [event.id]


# -- dead letters, dedup, metrics ------------------------------------------------------------------


async def dead_letters(redis: Redis, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(f"{stream}:dead")]


async def test_a_poisoned_message_lands_in_the_dead_letter_stream(redis: Redis, redis_namespace: str) -> None:
    """A handler that always fails gets the message max_attempts times; then it is moved aside,
    acknowledged, and the messages after it are still delivered."""
    bus = RedisStreamBus(redis, redis_namespace, consumer="users-1", reclaim_after_seconds=0.1, max_attempts=3)
    stream = bus.stream("user.registered")
    poisoned, healthy = registered(), registered()
    calls: list[str] = []
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        calls.append(event.id)
        if event.id == poisoned.id:
            raise ValueError("this event breaks the handler")
        handled.append(event)

    bus.subscribe("user.registered", "users", handler)
    dead_lettered = {"event_type": "user.registered", "group": "users", "outcome": "dead_lettered"}
    dead_lettered_before = local_sample(HANDLED, **dead_lettered)
    await bus.start()
    try:
        await bus.publish(poisoned)
        await bus.publish(healthy)
        [dead] = await eventually(lambda: dead_letters(redis, stream), "the dead letter")
        await eventually(lambda: all_acknowledged(redis, stream, "users"), "the acknowledgements")
    finally:
        await bus.close()
    assert msgspec.json.decode(dead[b"event"], type=Event) == poisoned
    assert dead[b"group"] == b"users"
    assert dead[b"attempts"] == b"3"
    assert calls.count(poisoned.id) == 3
    assert handled == [healthy]
    assert local_sample(HANDLED, **dead_lettered) == dead_lettered_before + 1


async def test_a_message_that_does_not_decode_is_dead_lettered_at_once(redis: Redis, redis_namespace: str) -> None:
    bus = RedisStreamBus(redis, redis_namespace, consumer="users-1")
    stream = bus.stream("user.registered")
    handler = Recorder()
    bus.subscribe("user.registered", "users", handler)
    await redis.xadd(stream, {"event": b"{not json"})
    await bus.start()
    try:
        [dead] = await eventually(lambda: dead_letters(redis, stream), "the dead letter")
    finally:
        await bus.close()
    assert dead[b"event"] == b"{not json"
    assert dead[b"reason"].startswith(b"undecodable")
    assert handler.calls == 0
    assert await pending(redis, stream, "users") == 0


async def test_in_memory_bus_retries_then_dead_letters() -> None:
    bus = InMemoryBus(max_attempts=3, retry_delay_seconds=0.01)
    broken = Recorder(failures=100)
    bus.subscribe("user.registered", "users", broken)
    event = registered()
    await bus.publish(event)
    await bus.close()
    assert broken.calls == 3
    [dead] = bus.dead_letters
    assert (dead.group, dead.event, dead.attempts) == ("users", event, 3)
    assert "dependency is down" in dead.error


async def test_consumer_lag_is_a_metric(redis: Redis, redis_namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.events.LAG_REFRESH_SECONDS", 0.0)
    group = f"lag-{uuid.uuid4().hex[:6]}"
    bus = RedisStreamBus(redis, redis_namespace)
    stream = bus.stream("user.registered")
    for _ in range(3):
        await bus.publish(registered())
    release, started = asyncio.Event(), asyncio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await release.wait()

    bus.subscribe("user.registered", group, slow)
    await bus.start()
    try:
        line = f'pyairtable_events_consumer_pending{{event_type="user.registered",group="{group}"}}'
        await asyncio.wait_for(started.wait(), WAIT_SECONDS)
        release.set()
        await eventually(lambda: all_acknowledged(redis, stream, group), "the acknowledgements")
        await eventually(lambda: f"{line} 0.0" in local_exposition(), "the pending gauge")
        assert (
            f'pyairtable_events_consumer_lag{{event_type="user.registered",group="{group}"}} 0.0' in local_exposition()
        )
        handled = f'pyairtable_events_handled_total{{event_type="user.registered",group="{group}",outcome="handled"}}'
        assert f"{handled} 3.0" in local_exposition()
    finally:
        await bus.close()


@pytest.fixture
async def auth_sessions(auth_settings: AuthSettings) -> AsyncIterator[Any]:
    engine = create_engine(auth_settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_an_idempotent_handler_applies_a_redelivered_event_once(auth_sessions: Any) -> None:
    applied: list[str] = []

    async def apply(session: Any, event: Event) -> None:
        applied.append(event.id)

    handler = idempotent(auth_sessions, processed_events, "test", apply)
    event = registered()
    await handler(event)
    await handler(event)
    await asyncio.gather(handler(event), handler(event))
    assert applied == [event.id]


async def test_a_failed_idempotent_handler_leaves_no_mark_and_runs_again(auth_sessions: Any) -> None:
    """The effect and the processed mark commit together: a failure rolls back both."""
    attempts: list[str] = []

    async def apply(session: Any, event: Event) -> None:
        attempts.append(event.id)
        if len(attempts) == 1:
            raise RuntimeError("crashed half way")

    handler = idempotent(auth_sessions, processed_events, "test", apply)
    event = registered()
    with pytest.raises(RuntimeError):
        await handler(event)
    await handler(event)
    await handler(event)
    assert attempts == [event.id, event.id]
    async with auth_sessions() as session:
        marks = (await session.execute(select(processed_events.c.event_id))).scalars().all()
    assert [str(mark) for mark in marks] == [event.id]


async def test_relays_side_by_side_publish_each_event_once(
    relay_parts: tuple[Any, OutboxRelay, RedisStreamBus], redis: Redis
) -> None:
    """FOR UPDATE SKIP LOCKED: two relays over one outbox never publish the same row twice."""
    sessionmaker, first, bus = relay_parts
    second = OutboxRelay(sessionmaker, outbox, bus, poll_seconds=3600, batch_size=7)
    first.batch_size = 7
    events = [registered() for _ in range(60)]
    published_before = local_sample(PUBLISHED, event_type="user.registered")
    async with sessionmaker() as session, session.begin():
        for event in events:
            await add_event(session, outbox, event)

    async def drain(relay: OutboxRelay) -> int:
        total = 0
        while sent := await relay.publish_pending():
            total += sent
        return total

    try:
        counts = await asyncio.gather(drain(first), drain(second))
    finally:
        await second.stop()
    assert sum(counts) == 60
    published = [e.id for e in await stream_events(redis, bus.stream("user.registered"))]
    assert sorted(published) == sorted(e.id for e in events)
    assert local_sample(PUBLISHED, event_type="user.registered") == published_before + 60
