"""Whether the anonymous mail routes tell an address with an account from one without, by their
answer or by their time.

    python -m bench.enumeration [--tries 40] [--postgres URL] [--json PATH]

Starts the real auth service (``python -m auth_service migrate`` then ``serve`` on a free loopback
port; SQLite by default, or the given PostgreSQL database; in-memory stores; the development
mailer, which logs each message) with ``REQUIRE_VERIFIED_EMAIL=true`` and the default argon2id
parameters, and for each route sends ``--tries`` requests for a known address and as many for an
unknown one, alternating (known, unknown, known, ...), one at a time over one connection, with
``--gap-ms`` between them (the mail a known address causes is made after the answer: the gap
keeps that work out of the next request's time, as a patient prober would):

* ``POST /password/forgot``: an account's address vs one that has none;
* ``POST /register``: an address that has an account vs a new one each time;
* ``POST /email/verify/resend``: an unverified account's address vs one that has none.

Every answer of a route must have the same status and body (``request_id`` aside); the report
gives each side's median time and their ratio (goal: within 10 %).
"""

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import HOST, SHARED_SETTING_NAMES, LoggedServer, say, scrubbed_environ, utc_timestamp
from bench.login_vs_argon2 import AuthServer

AUTH = "/api/v1/auth"
PASSWORD = "correct horse battery staple"
GOAL_RATIO = 1.10


def service_env(data_dir: Path, database_url: str) -> dict[str, str]:
    env = scrubbed_environ(SHARED_SETTING_NAMES, ("AUTH_",))
    env.update(
        {
            "ENVIRONMENT": "development",
            "DATA_DIR": str(data_dir),
            "JWT_SECRET": secrets.token_urlsafe(48),
            "LOG_LEVEL": "WARNING",
            "REQUIRE_VERIFIED_EMAIL": "true",
            # One client sends everything: the throttles would answer 429 long before the end.
            "AUTH_IP_ATTEMPTS_PER_MINUTE": "100000000",
            "MAIL_PER_ADDRESS_PER_HOUR": "100000000",
        }
    )
    if database_url:
        env["AUTH_DATABASE_URL"] = database_url
    return env


def timed(client: httpx.Client, path: str, body: dict[str, str]) -> tuple[float, int, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - started
    answer = {key: value for key, value in response.json().items() if key != "request_id"}
    return elapsed, response.status_code, answer


def compare(client: httpx.Client, route: str, known: Any, unknown: Any, tries: int, gap: float) -> dict[str, Any]:
    """``known``/``unknown`` make each request's body; both sides alternate."""
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    answers: set[str] = set()
    for _ in range(tries):
        for side, body in (("known", known()), ("unknown", unknown())):
            time.sleep(gap)
            elapsed, status, answer = timed(client, f"{AUTH}/{route}", body)
            times[side].append(elapsed)
            answers.add(json.dumps([status, answer], sort_keys=True))
    known_ms, unknown_ms = (statistics.median(times[side]) * 1000 for side in ("known", "unknown"))
    ratio = max(known_ms, unknown_ms) / min(known_ms, unknown_ms)
    return {
        "route": f"POST {AUTH}/{route}",
        "known_median_ms": round(known_ms, 2),
        "unknown_median_ms": round(unknown_ms, 2),
        "ratio": round(ratio, 3),
        "goal_met": ratio <= GOAL_RATIO,
        "distinct_answers": len(answers),
        "answer": json.loads(next(iter(answers))) if len(answers) == 1 else sorted(answers),
    }


def fresh() -> str:
    return f"nobody-{uuid.uuid4().hex[:12]}@example.com"


def run(tries: int, database_url: str, gap: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-enumeration-") as folder:
        server: LoggedServer = AuthServer(service_env(Path(folder), database_url), Path(folder))
        server.start()
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                for address in ("known@example.com", "unverified@example.com"):
                    client.post(f"{AUTH}/register", json={"email": address, "password": PASSWORD})
                return [
                    compare(
                        client,
                        "password/forgot",
                        lambda: {"email": "known@example.com"},
                        lambda: {"email": fresh()},
                        tries,
                        gap,
                    ),
                    compare(
                        client,
                        "register",
                        lambda: {"email": "known@example.com", "password": PASSWORD},
                        lambda: {"email": fresh(), "password": PASSWORD},
                        tries,
                        gap,
                    ),
                    compare(
                        client,
                        "email/verify/resend",
                        lambda: {"email": "unverified@example.com"},
                        lambda: {"email": fresh()},
                        tries,
                        gap,
                    ),
                ]
        finally:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=40)
    parser.add_argument("--postgres", default="", help="a PostgreSQL URL for the auth database (default: SQLite)")
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.tries, args.postgres, args.gap_ms / 1000)
    report = {"when": utc_timestamp(), "host": HOST, "tries": args.tries, "gap_ms": args.gap_ms, "results": results}
    for result in results:
        say(
            f"{result['route']}: known {result['known_median_ms']} ms, unknown {result['unknown_median_ms']} ms,"
            f" ratio {result['ratio']} ({'ok' if result['goal_met'] else 'over 10 %'}),"
            f" {result['distinct_answers']} distinct answer(s)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    same = all(result["distinct_answers"] == 1 for result in results)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
