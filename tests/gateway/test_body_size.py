"""Oversized bodies (F5): refused with 413 problem+json whether announced by Content-Length or
streamed chunked, and the upstream never gets them."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app
from tests.conftest import app_client
from tests.gateway.conftest import USERS, SettingsFactory, access_token, assert_problem, bearer
from tests.gateway.echo import Echo

LIMIT = 1000


@pytest.fixture
async def limited(make_settings: SettingsFactory, echo: Echo) -> AsyncIterator[httpx.AsyncClient]:
    app: Litestar = create_app(make_settings(max_body_size=LIMIT), services={USERS: echo})
    async with app_client(app) as client:
        yield client


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


async def test_a_body_at_the_limit_is_forwarded_whole(limited: httpx.AsyncClient, echo: Echo) -> None:
    fixed = await limited.post(f"{USERS}/upload", headers=bearer(access_token()), content=b"x" * LIMIT)
    assert fixed.status_code == 200, fixed.text
    streamed = await limited.post(f"{USERS}/upload", headers=bearer(access_token()), content=chunks(LIMIT))
    assert streamed.status_code == 200, streamed.text
    assert [len(seen.body) for seen in echo.seen] == [LIMIT, LIMIT]


@pytest.mark.parametrize("size", [LIMIT + 1, 10 * LIMIT, 10_000_000])
async def test_content_length_over_the_limit_is_413(limited: httpx.AsyncClient, echo: Echo, size: int) -> None:
    response = await limited.post(f"{USERS}/upload", headers=bearer(access_token()), content=b"x" * size)
    body = assert_problem(response, 413, "payload-too-large")
    assert str(LIMIT) in body["detail"]
    assert body["instance"] == f"{USERS}/upload"
    assert echo.seen == []


@pytest.mark.parametrize("size", [LIMIT + 1, 5 * LIMIT])
async def test_a_chunked_body_over_the_limit_is_413(limited: httpx.AsyncClient, echo: Echo, size: int) -> None:
    response = await limited.post(f"{USERS}/upload", headers=bearer(access_token()), content=chunks(size))
    assert_problem(response, 413, "payload-too-large")
    assert echo.seen == [], "the upstream was given an oversized body"


async def test_a_lying_content_length_does_not_smuggle_a_larger_body(limited: httpx.AsyncClient, echo: Echo) -> None:
    """Content-Length says 10, the stream carries more than the limit: counted, not trusted."""
    response = await limited.post(
        f"{USERS}/upload",
        headers={**bearer(access_token()), "Content-Length": "10"},
        content=chunks(3 * LIMIT),
    )
    assert_problem(response, 413, "payload-too-large")
    assert echo.seen == []


async def test_an_oversized_body_without_a_token_is_refused_as_unauthorised(
    limited: httpx.AsyncClient, echo: Echo
) -> None:
    response = await limited.post(f"{USERS}/upload", content=b"x" * (LIMIT + 1))
    assert_problem(response, 401, "unauthorized")
    assert echo.seen == []


async def test_a_body_that_stops_arriving_is_408_and_never_reaches_the_upstream(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    """A client that sends part of its body and then nothing (a slow POST) is not waited for."""
    app: Litestar = create_app(make_settings(client_body_timeout=0.3), services={USERS: echo})

    async def stalling() -> AsyncIterator[bytes]:
        yield b"x" * 100
        await asyncio.sleep(3)
        yield b"x" * 100

    async with app_client(app) as client:
        # Its body stalls for 3 s: a 408 means the gateway stopped waiting (at 0.3 s), not the body ending.
        response = await client.post(f"{USERS}/upload", headers=bearer(access_token()), content=stalling())
        steady = await client.post(f"{USERS}/upload", headers=bearer(access_token()), content=chunks(LIMIT))

    body = assert_problem(response, 408, "request-timeout")
    assert "0.3 s" in body["detail"]
    assert response.headers["connection"] == "close"
    assert steady.status_code == 200, steady.text  # a body that keeps coming is not cut
    assert [len(seen.body) for seen in echo.seen] == [LIMIT]
