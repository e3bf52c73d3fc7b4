"""A deleted profile closes the account (``user.deleted``): a sign-in or refresh that checked the
account while the closing was being applied waits for it and is refused, so no token outlives the
closing, and once its tokens are refused a sign-in is refused too."""

import asyncio
import uuid
from typing import Any

import httpx
import jwt
import msgspec
import psycopg
import pytest
from litestar import Litestar

from auth_service.app import create_app
from auth_service.config import AuthSettings
from auth_service.deps import auth_service
from tests.auth_service.conftest import PASSWORD, bearer, register
from tests.conftest import Clock, eventually

AUTH = "/api/v1/auth"
CREDENTIALS = {"email": "ada@example.com", "password": PASSWORD}


def user_id(tokens: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"])


@pytest.fixture
def auth_app(auth_settings: AuthSettings, clock: Clock) -> Litestar:
    """The service, with statements allowed to wait as long as a loaded test machine may take to
    commit the closing (production cancels a statement after 1.5 s: a 503 to retry)."""
    return create_app(msgspec.structs.replace(auth_settings, db_statement_timeout_ms=30_000), clock=clock)


def waiting_on_a_lock(database: str) -> bool:
    """Whether a transaction on ``database`` waits for a lock another one holds (a row's lock
    is waited for on the holder's transaction id, a lock of no database: hence the join)."""
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE NOT l.granted AND a.datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


async def close_the_account_while(
    app: Litestar, database: str, account: uuid.UUID, request: asyncio.Task[httpx.Response]
) -> httpx.Response:
    """Apply the closing in a transaction held open until ``request`` waits for it, then commit."""
    async with app.state.sessionmaker() as session, session.begin():
        await auth_service(session, app.state).deactivate_deleted_user(account)
        await eventually(lambda: waiting_on_a_lock(database), "the request to wait for the closing")
    return await request


async def test_a_sign_in_during_the_closing_waits_for_it_and_is_refused(
    auth_app: Litestar, client: httpx.AsyncClient, clean_auth_database: str
) -> None:
    tokens = await register(client)
    sign_in = asyncio.create_task(client.post(f"{AUTH}/login", json=CREDENTIALS))

    answer = await close_the_account_while(auth_app, clean_auth_database, user_id(tokens), sign_in)

    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "invalid-credentials"
    assert (await client.get(f"{AUTH}/me", headers=bearer(tokens))).status_code == 401


async def test_a_refresh_during_the_closing_waits_for_it_and_is_refused(
    auth_app: Litestar, client: httpx.AsyncClient, clean_auth_database: str
) -> None:
    tokens = await register(client)
    refresh = asyncio.create_task(client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]}))

    answer = await close_the_account_while(auth_app, clean_auth_database, user_id(tokens), refresh)

    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "invalid_grant"


async def test_tokens_taken_before_the_closing_are_refused_and_so_is_every_sign_in_after(
    auth_app: Litestar, client: httpx.AsyncClient
) -> None:
    tokens = await register(client)
    signed_in = await client.post(f"{AUTH}/login", json=CREDENTIALS)
    assert signed_in.status_code == 200, signed_in.text

    async with auth_app.state.sessionmaker() as session, session.begin():
        await auth_service(session, auth_app.state).deactivate_deleted_user(user_id(tokens))

    for taken in (tokens, signed_in.json()):
        assert (await client.get(f"{AUTH}/me", headers=bearer(taken))).status_code == 401
        refreshed = await client.post(f"{AUTH}/refresh", json={"refresh_token": taken["refresh_token"]})
        assert refreshed.status_code == 401
    assert (await client.post(f"{AUTH}/login", json=CREDENTIALS)).status_code == 401
