"""``make smoke URL=... [API_KEY=...]``: walk a running platform through its gateway, as a user would.

``python -m bench.smoke --url http://127.0.0.1:8080`` (the legacy key from ``--api-key`` or the
``API_KEY`` environment variable): the gateway's ``/ready`` (every upstream it checks must be
ready; a platform still starting is given ``--wait`` seconds),
register a random address, sign in, ``/auth/me``, ``/users/me`` (the profile arrives through the
``user.registered`` event: waited for within ``--wait`` seconds), refresh, list the Airtable bases
and read a table's records from the first one, post an analytics event and read ``/usage/me``, a
legacy route with the key, the rate-limit headers, then sign out and see the old token refused.
Each step prints its name, the HTTP status and the time it took; the first failure prints what it
got and ends the walk with exit status 1. It works against ``make run`` and ``make run-distributed``
alike, and against a deployment (it registers one account there: use a platform whose sign-ups
are open). Response bodies of failures are shown cut short; tokens and passwords are never printed.
"""

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

RATE_LIMIT_HEADERS = ("ratelimit-policy", "x-ratelimit-limit")
SHOWN_BODY = 500


class StepFailed(Exception):
    """A step got something else than a working platform answers."""


class Walk:
    def __init__(self, client: httpx.Client, out: Callable[[str], None]) -> None:
        self.client = client
        self.out = out
        self.last: httpx.Response | None = None

    def call(self, name: str, method: str, path: str, expected: int, **kwargs: Any) -> httpx.Response:
        """One request; a status other than ``expected`` fails the step with what came back."""
        started = time.perf_counter()
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StepFailed(f"{name}: {method} {path} failed: {exc!r}") from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.last = response
        self.out(f"{name:<24} {method:<6} {path:<48} {response.status_code}  {elapsed_ms:7.1f} ms")
        if response.status_code != expected:
            raise StepFailed(f"{name}: expected {expected}, got {response.status_code}: {response.text[:SHOWN_BODY]}")
        return response


def json_of(response: httpx.Response, *keys: str) -> dict[str, Any]:
    """The JSON object of ``response``, which must hold ``keys``."""
    try:
        body = response.json()
    except ValueError:
        raise StepFailed(f"{response.request.url.path}: not JSON: {response.text[:SHOWN_BODY]}") from None
    if not isinstance(body, dict) or any(key not in body for key in keys):
        raise StepFailed(f"{response.request.url.path}: expected the keys {keys}, got {str(body)[:SHOWN_BODY]}")
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check_ready(walk: Walk, wait_seconds: float) -> None:
    """The gateway ready, and every upstream it checks; a platform still starting (``make
    run-distributed`` in another terminal) is given ``wait_seconds`` to get there."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            body = json_of(walk.call("gateway ready", "GET", "/ready", 200), "status")
            checks = body.get("checks", {})
            upstreams = {name: check for name, check in checks.items() if name.startswith("upstream:")}
            failing = {name: check for name, check in upstreams.items() if check.get("status") != "ok"}
            if not failing:
                return
            raise StepFailed(f"gateway ready: upstreams not ready: {failing}")
        except StepFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def sign_up_and_in(walk: Walk, email: str, password: str) -> dict[str, Any]:
    registration = {"email": email, "password": password, "first_name": "Smoke"}
    walk.call("register", "POST", "/api/v1/auth/register", 201, json=registration)
    credentials = {"email": email, "password": password}
    return json_of(walk.call("login", "POST", "/api/v1/auth/login", 200, json=credentials), "access_token")


def wait_for_profile(walk: Walk, token: str, wait_seconds: float) -> None:
    """``/users/me`` answers at once (from the token); its first name comes with the event."""
    deadline = time.monotonic() + wait_seconds
    while True:
        profile = json_of(walk.call("users me", "GET", "/api/v1/users/me", 200, headers=bearer(token)))
        if profile.get("first_name") == "Smoke":
            return
        if time.monotonic() > deadline:
            raise StepFailed(f"users me: the profile's first name never arrived (user.registered) in {wait_seconds} s")
        time.sleep(0.25)


def read_airtable(walk: Walk, token: str) -> None:
    bases = json_of(walk.call("airtable bases", "GET", "/api/v1/airtable/bases", 200, headers=bearer(token)), "bases")
    if not bases["bases"]:
        walk.out("airtable records         skipped: no base is granted to the new account's organisation")
        return
    base = bases["bases"][0]["id"]
    tables_path = f"/api/v1/airtable/bases/{base}/tables"
    tables = json_of(walk.call("airtable tables", "GET", tables_path, 200, headers=bearer(token)), "tables")
    if not tables["tables"]:
        raise StepFailed(f"airtable tables: base {base} has no table")
    records_path = f"{tables_path}/{tables['tables'][0]['id']}/records"
    json_of(walk.call("airtable records", "GET", records_path, 200, headers=bearer(token)), "records")


def use_analytics(walk: Walk, token: str) -> None:
    event = {"event_type": "smoke_test", "properties": {"source": "bench.smoke"}}
    walk.call("analytics event", "POST", "/api/v1/analytics/events", 202, json=event, headers=bearer(token))
    json_of(walk.call("usage me", "GET", "/api/v1/analytics/usage/me", 200, headers=bearer(token)), "totals")


def legacy_login(walk: Walk, email: str, password: str, api_key: str) -> None:
    if not api_key:
        walk.out("legacy route              skipped: no API_KEY given")
        return
    credentials = {"email": email, "password": password}
    response = walk.call(
        "legacy login (key)", "POST", "/auth/login", 200, json=credentials, headers={"X-API-Key": api_key}
    )
    json_of(response, "access_token")


def check_rate_limit_headers(walk: Walk, token: str) -> None:
    response = walk.call("rate-limit headers", "GET", "/api/v1/auth/me", 200, headers=bearer(token))
    missing = [name for name in RATE_LIMIT_HEADERS if name not in response.headers]
    if missing:
        raise StepFailed(f"rate-limit headers: {missing} missing from a limited route's answer")


def sign_out(walk: Walk, token: str) -> None:
    walk.call("logout", "POST", "/api/v1/auth/logout", 204, headers=bearer(token))
    walk.call("old token refused", "GET", "/api/v1/auth/me", 401, headers=bearer(token))


def smoke(url: str, api_key: str = "", wait_seconds: float = 20.0, out: Callable[[str], None] = print) -> None:
    """The whole walk; raises StepFailed at the first step that fails."""
    email = f"smoke-{secrets.token_hex(6)}@example.com"
    password = secrets.token_urlsafe(18)
    with httpx.Client(base_url=url, timeout=30) as client:
        walk = Walk(client, out)
        check_ready(walk, wait_seconds)
        tokens = sign_up_and_in(walk, email, password)
        me = json_of(walk.call("auth me", "GET", "/api/v1/auth/me", 200, headers=bearer(tokens["access_token"])))
        if me.get("email") != email:
            raise StepFailed("auth me: another account than the one signed in")
        wait_for_profile(walk, tokens["access_token"], wait_seconds)
        refresh = {"refresh_token": tokens["refresh_token"]}
        renewed = json_of(walk.call("refresh", "POST", "/api/v1/auth/refresh", 200, json=refresh), "access_token")
        token = renewed["access_token"]
        read_airtable(walk, token)
        use_analytics(walk, token)
        legacy_login(walk, email, password, api_key)
        check_rate_limit_headers(walk, token)
        sign_out(walk, token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("URL") or "http://127.0.0.1:8080", help="the gateway")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY") or "", help="the legacy key (or $API_KEY)")
    parser.add_argument(
        "--wait", type=float, default=20.0, help="seconds to wait for readiness and for an event's effect"
    )
    args = parser.parse_args(argv)
    try:
        smoke(args.url.rstrip("/"), args.api_key, args.wait)
    except StepFailed as failure:
        print(f"FAILED {failure}", file=sys.stderr)
        return 1
    print("smoke walk passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
