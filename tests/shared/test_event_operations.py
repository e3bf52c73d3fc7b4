"""Operating the event backbone: processed event ids are pruned after the retention, and the
dead letters of a consuming service are listed, replayed and dropped with its command line."""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from auth_service.app import EVENTS, create_app
from auth_service.config import AuthSettings
from shared.db import create_engine, create_sessionmaker
from shared.events import Event, RedisStreamBus, new_event
from tests.auth_service.conftest import PASSWORD, register
from tests.conftest import app_client, eventually


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def processed_ids(settings: AuthSettings) -> set[str]:
    with psycopg.connect(settings.database_url) as conn:
        return {str(row[0]) for row in conn.execute("SELECT event_id FROM processed_events")}


def mark_processed(settings: AuthSettings, event_id: str, age: timedelta) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO processed_events VALUES (%s, 'user.deleted', %s)", (event_id, datetime.now(UTC) - age)
        )


def user_deleted(user_id: str, event_id: str | None = None) -> Event:
    event = new_event("user.deleted", "users", {"user_id": user_id})
    return msgspec.structs.replace(event, id=event_id) if event_id else event


async def can_log_in(client: httpx.AsyncClient, email: str) -> bool:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return response.status_code == 200


def auth_cli(settings: AuthSettings, *args: str, redis: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "AUTH_DATABASE_URL": settings.database_url,
        "DATA_DIR": settings.data_dir,
        "REDIS_NAMESPACE": settings.redis_namespace,
        **({"REDIS_URL": settings.redis_url} if redis else {}),
    }
    command = [sys.executable, "-m", "auth_service", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


async def run_cli(settings: AuthSettings, *args: str, redis: bool = True) -> subprocess.CompletedProcess[str]:
    """The command line, while the test's own consumers keep running."""
    return await asyncio.to_thread(auth_cli, settings, *args, redis=redis)


# -- pruning processed event ids -------------------------------------------------------------------


@pytest.fixture
async def pruning_app(auth_settings: AuthSettings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    settings = msgspec.structs.replace(auth_settings, event_dedup_retention_days=30, event_dedup_prune_seconds=0.1)
    app = create_app(settings)
    async with app_client(app) as client:
        yield app, client


async def test_a_running_service_forgets_only_ids_older_than_the_retention(
    pruning_app: tuple[Litestar, httpx.AsyncClient], auth_settings: AuthSettings
) -> None:
    """The young id is kept: its event, delivered again, is still skipped (the user it would
    deactivate can still log in), while a new event is applied."""
    app, client = pruning_app
    kept, gone = await register(client, "kept@example.com"), await register(client, "gone@example.com")
    old_id, young_id = str(uuid.uuid4()), str(uuid.uuid4())
    mark_processed(auth_settings, old_id, timedelta(days=31))
    mark_processed(auth_settings, young_id, timedelta(days=29))

    await eventually(lambda: old_id not in processed_ids(auth_settings), "the old id to be pruned")
    assert young_id in processed_ids(auth_settings)

    await app.state.bus.publish(user_deleted(kept["user"]["id"], young_id))
    await app.state.bus.publish(user_deleted(gone["user"]["id"]))
    await eventually(lambda: _not(can_log_in(client, "gone@example.com")), "the new event applied")
    assert await can_log_in(client, "kept@example.com")


async def _not(check: Any) -> bool:
    return not await check


def test_prune_command_forgets_ids_older_than_asked(auth_settings: AuthSettings) -> None:
    old_id, young_id = str(uuid.uuid4()), str(uuid.uuid4())
    mark_processed(auth_settings, old_id, timedelta(days=3))
    mark_processed(auth_settings, young_id, timedelta(hours=1))

    done = auth_cli(auth_settings, "prune-processed-events", "--older-than", "2d")

    assert done.returncode == 0, done.stderr
    assert "forgot 1 processed event id(s)" in done.stdout
    assert processed_ids(auth_settings) == {young_id}
    default = auth_cli(auth_settings, "prune-processed-events")  # EVENT_DEDUP_RETENTION_DAYS: 30
    assert "forgot 0 processed event id(s)" in default.stdout
    assert processed_ids(auth_settings) == {young_id}


def test_prune_command_refuses_an_age_within_the_redelivery_window(auth_settings: AuthSettings) -> None:
    young_id = str(uuid.uuid4())
    mark_processed(auth_settings, young_id, timedelta(minutes=5))

    refused = auth_cli(auth_settings, "prune-processed-events", "--older-than", "60s")

    assert refused.returncode == 2
    assert "longer than a redelivery can come" in refused.stderr
    assert processed_ids(auth_settings) == {young_id}
    malformed = auth_cli(auth_settings, "prune-processed-events", "--older-than", "soon")
    assert malformed.returncode == 2
    assert "expected a duration" in malformed.stderr


# -- dead letters ----------------------------------------------------------------------------------


class FlakyConsumer:
    """The auth service's consumer group, with a handler that fails until it is fixed."""

    def __init__(self, redis: Redis, settings: AuthSettings) -> None:
        self.bus = RedisStreamBus(redis, settings.redis_namespace, reclaim_after_seconds=0.1, max_attempts=2)
        self.engine = create_engine(settings)
        self.broken = True
        self.applied: list[str] = []
        self.seen: list[str] = []
        EVENTS.subscribe(self.bus, create_sessionmaker(self.engine), self.apply)

    async def apply(self, session: Any, event: Event) -> None:
        self.seen.append(event.id)
        if self.broken:
            raise ValueError("the handler has a bug")
        self.applied.append(event.id)


@pytest.fixture
async def consumer(redis: Redis, auth_settings: AuthSettings) -> AsyncIterator[FlakyConsumer]:
    flaky = FlakyConsumer(redis, auth_settings)
    await flaky.bus.start()
    yield flaky
    await flaky.bus.close()
    await flaky.engine.dispose()


async def dead_letter_count(redis: Redis, consumer: FlakyConsumer) -> int:
    return int(await redis.xlen(consumer.bus.dead_letter_stream("user.deleted")))


async def test_a_poisoned_event_is_listed_then_replayed_once_the_handler_is_fixed(
    consumer: FlakyConsumer, redis: Redis, auth_settings: AuthSettings
) -> None:
    poisoned = user_deleted(str(uuid.uuid4()))
    await consumer.bus.publish(poisoned)
    await eventually(lambda: dead_letter_count(redis, consumer), "the dead letter")
    dead_stream = consumer.bus.dead_letter_stream("user.deleted")
    another_groups = user_deleted(str(uuid.uuid4()))
    await redis.xadd(dead_stream, {"event": msgspec.json.encode(another_groups), "group": "audit", "attempts": "5"})

    listed = await run_cli(auth_settings, "dead-letters", "list")

    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "TYPE", "GROUP", "ATTEMPTS", "AGE", "ERROR"]
    assert row.split()[:4] == [poisoned.id, "user.deleted", "auth", "2"]
    assert "ValueError: the handler has a bug" in row
    assert consumer.applied == []

    consumer.broken = False
    replayed = await run_cli(auth_settings, "dead-letters", "replay", "--id", poisoned.id)

    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 dead letter(s)" in replayed.stdout
    await eventually(lambda: consumer.applied, "the replayed event applied")
    assert await dead_letter_count(redis, consumer) == 1  # another group's, left alone
    assert (await run_cli(auth_settings, "dead-letters", "list")).stdout.strip() == "no dead letters"

    # Dead-lettered again somehow and replayed: the processed id makes it harmless.
    await redis.xadd(dead_stream, {"event": msgspec.json.encode(poisoned), "group": "auth"})
    again = await run_cli(auth_settings, "dead-letters", "replay", "--type", "user.deleted")
    assert again.returncode == 0, again.stderr
    later = user_deleted(str(uuid.uuid4()))
    await consumer.bus.publish(later)  # handled after the replay: the one consumer keeps the order
    await eventually(lambda: later.id in consumer.applied, "the event after the replay")
    assert consumer.applied == [poisoned.id, later.id]
    assert another_groups.id not in consumer.seen


async def test_drop_removes_a_dead_letter_for_good(
    consumer: FlakyConsumer, redis: Redis, auth_settings: AuthSettings
) -> None:
    dropped, kept = user_deleted(str(uuid.uuid4())), user_deleted(str(uuid.uuid4()))
    await consumer.bus.publish(dropped)
    await consumer.bus.publish(kept)
    await redis.xadd(consumer.bus.stream("user.deleted"), {"event": b"{not json"})
    await eventually(lambda: _equals(dead_letter_count(redis, consumer), 3), "three dead letters")

    done = await run_cli(auth_settings, "dead-letters", "drop", "--id", dropped.id)

    assert done.returncode == 0, done.stderr
    assert "dropped 1 dead letter(s)" in done.stdout
    rows = (await run_cli(auth_settings, "dead-letters", "list")).stdout.splitlines()[1:]
    [undecodable] = [row for row in rows if "undecodable" in row]
    assert [row.split()[0] for row in rows if row != undecodable] == [kept.id]
    entry_id = undecodable.split()[0]  # a message that does not decode has no event id

    refused = await run_cli(auth_settings, "dead-letters", "replay", "--id", entry_id)
    assert refused.returncode == 1
    assert "cannot be replayed; drop it" in refused.stderr
    assert (await run_cli(auth_settings, "dead-letters", "drop", "--id", entry_id)).returncode == 0

    consumer.broken = False
    assert (await run_cli(auth_settings, "dead-letters", "replay")).returncode == 0
    await eventually(lambda: consumer.applied, "the kept event applied")
    assert consumer.applied == [kept.id]


async def _equals(count: Any, expected: int) -> bool:
    return await count == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dead-letters"], "the following arguments are required"),
        (["dead-letters", "drop"], "the following arguments are required: --id"),
        (["dead-letters", "list", "--type", "user.registered"], "invalid choice: 'user.registered'"),
        (["dead-letters", "forget"], "invalid choice: 'forget'"),
    ],
)
def test_bad_dead_letter_arguments_are_refused(auth_settings: AuthSettings, args: list[str], message: str) -> None:
    refused = auth_cli(auth_settings, *args)
    assert refused.returncode == 2
    assert message in refused.stderr


def test_an_unknown_id_or_no_redis_is_a_clear_error(auth_settings: AuthSettings, tmp_path: Path) -> None:
    unknown = auth_cli(auth_settings, "dead-letters", "replay", "--id", str(uuid.uuid4()))
    assert unknown.returncode == 1
    assert "no dead letter of group 'auth' with id" in unknown.stderr
    embedded = auth_cli(auth_settings, "dead-letters", "list", redis=False)
    assert embedded.returncode == 2
    assert "REDIS_URL is not set" in embedded.stderr
