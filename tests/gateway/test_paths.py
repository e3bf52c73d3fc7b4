"""Path confusion (F3): every ambiguous request target is refused (400/404), or the upstream receives
exactly the path the gateway authorised.

Requests are made as raw ASGI calls, the way uvicorn would present them (``raw_path`` as received,
``path`` percent-decoded), because HTTP clients normalise dot segments before sending.
"""

import random
import re
from collections.abc import AsyncIterator
from urllib.parse import unquote

import pytest
from litestar import Litestar

from gateway import routing
from gateway.app import create_app
from gateway.errors import BadPath
from tests.conftest import app_client
from tests.gateway.conftest import AUTH, USERS, RawResponse, SettingsFactory, access_token, raw_request
from tests.gateway.echo import Echo

CONFUSING: list[bytes] = [
    b"/api/v1/users/../auth/me",
    b"/api/v1/users/%2e%2e/auth/me",
    b"/api/v1/users/%2E%2E%2Fauth%2Fme",
    b"/api/v1/users/..%2fauth/me",
    b"/api/v1/users/..%2Fauth%2Fme",
    b"/api/v1/users%2f..%2fauth/me",
    b"/api/v1/users/.%2e/auth/me",
    b"/api/v1/users/%2e./auth/me",
    b"/api/v1/users/x/../../auth/me",
    b"/api/v1/users/x/..",
    b"/api/v1/users/..",
    b"/api/v1/users/.",
    b"/api/v1/users/...",
    b"/api/v1/users/./x",
    b"/api/v1/users/%2e/x",
    b"/api/v1/users//x",
    b"//api/v1/users/x",
    b"/api/v1//users/x",
    b"/api/v1/users/%2f%2fx",
    b"/api/v1/users/x%2fy",
    b"/api/v1/users/x;x=y",
    b"/api/v1/users/..;/auth/me",
    b"/api/v1/users;x=y/x",
    b"/api/v1/users\\..\\auth\\me",
    b"/api/v1/users/%5c..%5cauth%5cme",
    b"/api/v1/users/%5C%2e%2e%5Cauth",
    b"/api/v1/users/%252e%252e/auth/me",
    b"/api/v1/users/%252e%252e%252fauth%252fme",
    b"/api/v1/users/x%00",
    b"/api/v1/users/x%00.json",
    b"/api/v1/users/%00/../auth/me",
    b"/api/v1/users/%EF%BC%8E%EF%BC%8E/auth/me",
    b"/api/v1/users/\xef\xbc\x8e\xef\xbc\x8e/auth/me",
    b"/api/v1/users/%C0%AE%C0%AE/auth/me",
    b"/api/v1/users/%u002e%u002e/auth/me",
    b"/api/v1/users/x.",
    b"/api/v1/users/x..",
    b"/api/v1/users/x%20",
    b"/api/v1/users/x%20/",
    b"/api/v1/users/x%09",
    b"/api/v1/users/x%0d%0aX-Injected:%201",
    b"/api/v1/users/x%3fadmin=1",
    b"/api/v1/users/x%23fragment",
    b"/api/v1/users/x#fragment",
    b"/api/v1/users/%",
    b"/api/v1/users/%zz",
    b"/api/v1/users/%2",
    b"/API/v1/users/x",
    b"/api/V1/users/x",
    b"/api/v1/Users/x",
    b"/api/v1/USERS/../auth/me",
    b"/api/v1/users/x/",
    b"/api/v1/users/x..y",
    b"/api/v1/users/~admin",
    b"/api/v1/users/x?next=../../auth/me&y=%2e%2e",
    b"/api/v1/users/admin%2Fdelete?x=1",
    b"/api/v1/auth/me/../../users/x",
    b"/api/v1/auth/%2e%2e/users/x",
]
# Of those, the ones forwarded as they are (plain text, no dot segment, no ambiguous encoding), and
# the ones whose prefix is no route of ours (paths are case-sensitive); every other one is a 400.
FORWARDED = {
    b"/api/v1/users/x.",
    b"/api/v1/users/x..",
    b"/api/v1/users/x%20",
    b"/api/v1/users/x%20/",
    b"/api/v1/users/x/",
    b"/api/v1/users/x..y",
    b"/api/v1/users/~admin",
    b"/api/v1/users/x?next=../../auth/me&y=%2e%2e",
}
NOT_A_PREFIX = {b"/API/v1/users/x", b"/api/V1/users/x", b"/api/v1/Users/x", b"/api/v1/USERS/../auth/me"}


TEXT_PATHS: list[bytes] = [
    b"/api/v1/users/Caf%C3%A9",
    b"/api/v1/users/Caf%c3%a9/records",
    b"/api/v1/users/%E6%9D%B1%E4%BA%AC%20office",
    b"/api/v1/users/%F0%9F%93%8A%20Reports",
    b"/api/v1/users/Stra%C3%9Fe",
]
NOT_TEXT_PATHS: list[bytes] = [
    b"/api/v1/users/%C0%AE%C0%AE/auth/me",  # overlong "."
    b"/api/v1/users/%E0%80%AE",  # overlong "." in three bytes
    b"/api/v1/users/%EF%BC%8E%EF%BC%8E/auth/me",  # fullwidth dots
    b"/api/v1/users/x%EF%BC%8Fy",  # fullwidth solidus
    b"/api/v1/users/x%EF%BC%BCy",  # fullwidth reverse solidus
    b"/api/v1/users/x%EF%BC%85%32%65",  # fullwidth percent
    b"/api/v1/users/x%E2%80%A4%E2%80%A4",  # one dot leaders (NFKC: ".")
    b"/api/v1/users/%E2%80%A5",  # two dot leader (NFKC: "..")
    b"/api/v1/users/x%C2%85y",  # C1 control (NEL)
    b"/api/v1/users/x%FF",  # not UTF-8
    b"/api/v1/users/x%80",  # a lone continuation byte
    b"/api/v1/users/x%C3",  # a truncated sequence
]


async def signed_in_request(app: Litestar, target: bytes) -> RawResponse:
    """``target`` exactly as sent (:func:`raw_request`), with a valid access token."""
    return await raw_request(app, target, headers=[(b"authorization", b"Bearer " + access_token().encode())])


@pytest.mark.parametrize("target", TEXT_PATHS, ids=[t.decode() for t in TEXT_PATHS])
async def test_percent_encoded_text_reaches_the_upstream_exactly(
    both: tuple[Litestar, Echo, Echo], target: bytes
) -> None:
    """Airtable table and field names are often not ASCII: encoded as UTF-8 they pass unchanged."""
    app, _, users_echo = both
    response = await signed_in_request(app, target)
    assert response.status_code == 200, (response.status_code, response.content)
    (received,) = users_echo.seen
    assert received.raw_path.encode("latin-1") == target
    assert received.path == unquote(target.decode("ascii"))


@pytest.mark.parametrize("target", NOT_TEXT_PATHS, ids=[t.decode() for t in NOT_TEXT_PATHS])
async def test_encoded_bytes_that_are_not_plain_text_are_refused(
    both: tuple[Litestar, Echo, Echo], target: bytes
) -> None:
    app, auth_echo, users_echo = both
    response = await signed_in_request(app, target)
    assert response.status_code == 400, (response.status_code, response.content)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert auth_echo.seen == [] and users_echo.seen == []


@pytest.fixture
async def both(make_settings: SettingsFactory) -> AsyncIterator[tuple[Litestar, Echo, Echo]]:
    auth_echo, users_echo = Echo(AUTH), Echo(USERS)
    app = create_app(make_settings(), services={AUTH: auth_echo, USERS: users_echo})
    async with app_client(app):
        yield app, auth_echo, users_echo


@pytest.mark.parametrize("target", CONFUSING, ids=[t.decode("latin-1") for t in CONFUSING])
async def test_a_confusing_path_is_refused_or_forwarded_exactly(
    both: tuple[Litestar, Echo, Echo], target: bytes
) -> None:
    app, auth_echo, users_echo = both
    response = await signed_in_request(app, target)
    reached = auth_echo.seen + users_echo.seen
    expected = 200 if target in FORWARDED else 404 if target in NOT_A_PREFIX else 400
    assert response.status_code == expected, (response.status_code, response.content)
    if expected != 200:
        assert reached == [], "a refused request reached an upstream"
        assert response.headers["content-type"].startswith("application/problem+json")
        return
    assert len(reached) == 1
    raw_path, _, query = target.partition(b"?")
    received = reached[0]
    assert received.raw_path.encode("latin-1") == raw_path, "the upstream got another path than the one authorised"
    assert received.path == unquote(raw_path.decode("ascii"))
    assert received.query_string.encode("latin-1") == query
    # The request went to the upstream whose prefix the exact path starts with.
    expected = users_echo if raw_path.startswith(USERS.encode() + b"/") or raw_path == USERS.encode() else auth_echo
    assert expected.seen == [received]


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", b"/api/v1/auth/login/../me", 400),
        ("POST", b"/api/v1/auth/login/..%2fme", 400),
        ("POST", b"/api/v1/auth/login%2f..%2fsessions", 400),
        ("POST", b"/api/v1/auth/login;/../logout", 400),
        ("POST", b"/api/v1/auth/login/%2e%2e/logout", 400),
        ("POST", b"/api/v1/auth/register//", 400),
        ("POST", b"/api/v1/auth/login/.", 400),
        ("POST", b"/api/v1/auth/LOGIN", 401),
        ("POST", b"/api/v1/auth/login%00", 400),
        ("POST", b"/api/v1/auth/login%20", 401),
        ("GET", b"/api/v1/auth/.well-known/jwks.json/../../me", 400),
        ("GET", b"/api/v1/auth/.well-known/jwks.json%2f..%2f..%2fme", 400),
        ("GET", b"/api/v1/auth/.well-known/../me", 400),
        ("GET", b"/api/v1/auth/.well-known%2fjwks.json", 400),
        ("GET", b"/api/v1/auth/%2ewell-known/jwks.json", 400),
    ],
)
async def test_a_public_route_cannot_be_used_to_reach_a_protected_one_without_a_token(
    both: tuple[Litestar, Echo, Echo], method: str, target: bytes, status: int
) -> None:
    """A dot segment or an ambiguous encoding is refused (400); a path that only looks like a public
    route (another case, a trailing space) is a protected one, so without a token it is a 401."""
    app, auth_echo, users_echo = both
    response = await raw_request(app, target, method=method)
    assert response.status_code == status, (response.status_code, response.content)
    assert auth_echo.seen == [] and users_echo.seen == []


async def test_a_canonical_public_path_still_passes(both: tuple[Litestar, Echo, Echo]) -> None:
    """Positive control: the raw-request helper reaches the upstream when the path is plain."""
    app, auth_echo, _ = both
    response = await raw_request(app, b"/api/v1/auth/login", method="POST", body=b"{}")
    assert response.status_code == 200, response.content
    assert auth_echo.seen[0].raw_path == "/api/v1/auth/login"
    assert auth_echo.seen[0].body == "{}"


def test_the_fast_path_check_agrees_with_the_full_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``checked_path`` answers common paths with one regex; on 50 000 generated paths built from
    the confusing pieces it must accept and refuse exactly what the full check does."""
    pieces = [b"/", b".", b"..", b"%", b"%2e", b"%2F", b"a", b"Z9", b"-", b"~", b"\\", b";", b"?", b" "]
    pieces += [b"\x00", b"@:_"]
    generator = random.Random(20261201)
    paths = [b"/" + b"".join(generator.choice(pieces) for _ in range(generator.randint(0, 10))) for _ in range(50_000)]

    def verdicts() -> list[str | None]:
        results: list[str | None] = []
        for path in paths:
            try:
                results.append(routing.checked_path(path))
            except BadPath:
                results.append(None)
        return results

    fast = verdicts()
    monkeypatch.setattr(routing, "_PLAIN", re.compile(rb"(?!)"))  # never matches: the full check only
    assert verdicts() == fast
    assert any(fast) and None in fast
