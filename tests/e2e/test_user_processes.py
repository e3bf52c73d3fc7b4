"""The user service and the event backbone as real processes: auth, users and the gateway over
HTTP on loopback, Redis streams between them, and processes SIGKILLed half way through an event.

Deadlines are generous bounds that prove "no hang" on a busy machine, never performance claims.
"""

import functools
import shlex
import signal
import subprocess
import uuid
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import redis as redis_sync

from shared.events import Event, encode_event, new_event
from tests.conftest import assert_problem
from tests.e2e.processes import (
    PYTHON,
    REPO,
    Processes,
    Service,
    Stack,
    environment,
    free_port,
    metric,
    wait_for,
)

WAIT_SECONDS = 20.0
eventually = functools.partial(wait_for, timeout=WAIT_SECONDS)
PASSWORD = "a long enough passphrase"


GENEROUS = {"RATE_LIMIT_PER_MINUTE": "10000", "RATE_LIMIT_BURST": "10000"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user_env(stack: Stack, database_url: str, **extra: str) -> dict[str, str]:
    """The user service's environment on ``database_url`` and the test's Redis namespace."""
    return environment(
        stack.data_dir, USERS_DATABASE_URL=database_url, **stack.redis, OUTBOX_POLL_SECONDS="0.2", **extra
    )


def migrate_users(env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "-m", "user_service", "migrate"], cwd=REPO, env=env, check=True, capture_output=True)


def start_user_service(started: Processes, env: dict[str, str], migrate: bool = True) -> Service:
    port = free_port()
    python = shlex.quote(PYTHON)
    serve = f"exec {python} -m user_service serve"
    command = f"{python} -m user_service migrate && {serve}" if migrate else serve
    return started.start(f"users-{port}", ["sh", "-c", command], {**env, "USERS_PORT": str(port)}, port)


def wait_for_line(service: Service, line: str, timeout: float = 60.0) -> None:
    wait_for(
        lambda: line in service.log_tail() or service.process.poll() is not None, f"{line} from {service.name}", timeout
    )
    assert service.process.poll() is None, service.log_tail()


def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return list(conn.execute(sql, params).fetchall())


# 1. Register, then delete, through the gateway.


def test_register_gives_a_profile_and_delete_locks_the_user_out_at_the_gateway(stack: Stack) -> None:
    auth = stack.auth()
    users = start_user_service(stack.processes, user_env(stack, stack.databases.create("users")))
    gateway = stack.gateway("gateway", AUTH_SERVICE_URL=auth.url, USER_SERVICE_URL=users.url, **GENEROUS)
    for service in (auth, users, gateway):
        service.wait_healthy(60)

    credentials = {"email": "ada@example.com", "password": PASSWORD}
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        registered = client.post("/api/v1/auth/register", json={**credentials, "first_name": "Ada"})
        assert registered.status_code == 201, registered.text
        token = registered.json()["access_token"]
        user_id = registered.json()["user"]["id"]

        def profile_from_the_event() -> dict[str, Any] | None:
            response = client.get("/api/v1/users/me", headers=bearer(token))
            assert response.status_code == 200, response.text  # never a 404 for oneself
            body: dict[str, Any] = response.json()
            return body if body["first_name"] == "Ada" else None

        profile = eventually(profile_from_the_event, "user.registered to reach the profile")
        assert (profile["id"], profile["email"]) == (user_id, "ada@example.com")

        other = client.post("/api/v1/auth/register", json={"email": "eve@example.com", "password": PASSWORD})
        assert_problem(client.get(f"/api/v1/users/{user_id}", headers=bearer(other.json()["access_token"])), 404)

        assert client.delete(f"/api/v1/users/{user_id}", headers=bearer(token)).status_code == 204
        eventually(
            lambda: client.get("/api/v1/users/me", headers=bearer(token)).status_code == 401, "the token to be refused"
        )
        assert_problem(client.post("/api/v1/auth/login", json=credentials), 401)
        assert_problem(client.get("/api/v1/auth/me", headers=bearer(token)), 401)
        refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": registered.json()["refresh_token"]})
        assert_problem(refreshed, 401)

        # The gateway itself refuses the token: with the user service gone it still answers 401,
        # not the 502 a token it let through would get.
        stack.processes.stop(users)
        assert_problem(client.get("/api/v1/users/me", headers=bearer(token)), 401)


# 2. A consumer killed half way through a message.


@pytest.mark.parametrize("hang_at", ["before-commit", "after-commit"])
def test_a_consumer_killed_mid_message_is_redelivered_and_applied_once(hang_at: str, stack: Stack) -> None:
    database = stack.databases.create("users")
    env = user_env(stack, database, EVENT_RECLAIM_SECONDS="0.5")
    migrate_users(env)
    user_id = str(uuid.uuid4())
    event = new_event(
        "user.registered",
        "auth",
        {"user_id": user_id, "email": "ada@example.com", "first_name": "Ada", "roles": ["user"]},
    )
    stream = f"{stack.namespace}:events:user.registered"
    redis = redis_sync.Redis.from_url(stack.redis_url)
    redis.xadd(stream, {"event": encode_event(event)})

    doomed = stack.processes.python("doomed", ["-m", "tests.e2e.event_crash", "consume", "--hang", hang_at], env, 0)
    wait_for_line(doomed, "HANGING")
    profiles = query(database, "SELECT id FROM profiles")
    assert len(profiles) == (1 if hang_at == "after-commit" else 0)
    assert redis.xpending(stream, "users")["pending"] == 1
    stack.processes.stop(doomed, signal.SIGKILL)

    users = start_user_service(stack.processes, env, migrate=False).wait_healthy(60)
    eventually(lambda: redis.xpending(stream, "users")["pending"] == 0, "the message to be taken over and acknowledged")
    assert [str(row[0]) for row in query(database, "SELECT id FROM profiles")] == [user_id]
    assert [str(row[0]) for row in query(database, "SELECT event_id FROM processed_events")] == [event.id]
    outcome = 'pyairtable_events_handled_total{event_type="user.registered",group="users",outcome="%s"}'
    assert metric(users.url, outcome % "handled") == 1.0
    if hang_at == "after-commit":  # the redelivery was recognised and skipped, not applied again
        assert metric(users.url, outcome % "duplicate") == 1.0
    else:  # the first attempt rolled back: the redelivery applied it, once
        assert outcome % "duplicate" not in httpx.get(f"{users.url}/metrics", timeout=5).text
    redis.close()


# 3. The relay killed between the commit and the publication.


def test_an_event_committed_but_not_published_is_delivered_after_a_restart(stack: Stack) -> None:
    database = stack.databases.create("users")
    env = user_env(stack, database)
    migrate_users(env)
    user_id = uuid.uuid4()
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO profiles (id, email, preferences, role, is_active, created_at, updated_at)"
            " VALUES (%s, 'ada@example.com', '{}', 'user', true, now(), now())",
            (user_id,),
        )
    stream = f"{stack.namespace}:events:user.deleted"
    redis = redis_sync.Redis.from_url(stack.redis_url)

    doomed = stack.processes.python(
        "doomed", ["-m", "tests.e2e.event_crash", "commit-then-publish", "--user-id", str(user_id)], env, 0
    )
    wait_for_line(doomed, "HANGING")
    [(deleted_at,)] = query(database, "SELECT deleted_at FROM profiles")
    assert deleted_at is not None  # the change is committed
    assert query(database, "SELECT event_type, published_at FROM outbox") == [("user.deleted", None)]
    stack.processes.stop(doomed, signal.SIGKILL)
    assert redis.xlen(stream) == 0

    start_user_service(stack.processes, env, migrate=False).wait_healthy(60)
    entries = eventually(lambda: redis.xrange(stream), "user.deleted on the stream")
    [event] = [msgspec.json.decode(fields[b"event"], type=Event) for _, fields in entries]
    assert event.data["user_id"] == str(user_id)
    eventually(lambda: query(database, "SELECT published_at FROM outbox")[0][0] is not None, "the row marked published")
    redis.close()
