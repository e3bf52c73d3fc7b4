"""RELIABILITY E1, the outbox crash soak: registrations through a real auth service that is
SIGKILLed again and again, checked end to end against the user service's profiles.

    python -m bench.outbox_crash_soak [--writes 1000] [--kills 20] [--consumer-kills 3] [--seed 1]
                                      [--concurrency 8] [--postgres URL] [--redis URL]

PostgreSQL databases of its own (temporary names, dropped at the end), a Redis namespace of its
own (keys deleted at the end), ``python -m auth_service`` and ``python -m user_service`` as real
processes on loopback. ``--concurrency`` clients register ``--writes`` new accounts
(``POST /api/v1/auth/register``; each commits the account and its ``user.registered`` outbox row
in one transaction; the relay publishes it to the Redis stream, the user service creates the
profile). At ``--kills`` seeded points of the run the auth service is SIGKILLed and restarted;
half of the kills (seeded) wait for an outbox row the relay has not marked sent yet, so that
some land between a commit and its publication. Right after each kill, the rows still unsent are
split into those not on the stream (killed between commit and publish) and those already on it
(published, not yet marked: they will be sent twice). The user service is SIGKILLed and
restarted ``--consumer-kills`` times as well.

Then, within 30 s, every outbox row must be sent and every profile made. Thresholds:

* at least one kill landed between a commit and its publication;
* accounts == ``user.registered`` outbox rows, one for one (0 mismatches);
* every outbox row sent, each kill's unsent rows within 30 s of the restart;
* every committed registration has exactly one event id on the stream, one ``processed_events``
  row and one profile (0 lost, 0 double-applied; duplicates on the stream are allowed);
* every registration the client saw fail (the connection cut by a kill) is either committed
  (with its event and profile) or absent everywhere (no account, no event, no profile).

Exits 1 if a threshold is missed. A client that could not connect (the service was down) retries
the same registration: nothing was sent.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import redis
from psycopg import sql

from bench.common import (
    HOST,
    SHARED_SETTING_NAMES,
    clear_redis_namespace,
    free_port,
    say,
    scrubbed_environ,
    sigterm_unwinds,
    utc_timestamp,
)
from shared.events import Event, event_stream
from tests.e2e.processes import FAST_ARGON2

REPO = Path(__file__).resolve().parents[1]
DRAIN_LIMIT_SECONDS = 30.0
STARTUP_SECONDS = 60.0
TARGETING_SECONDS = 3.0
PASSWORD = "a long enough soak passphrase"
CONNECTION_LOST = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout)


# -- the services ----------------------------------------------------------------------------


class ServiceProcess:
    """One service, served on a fixed loopback port, that can be SIGKILLed and started again."""

    def __init__(self, module: str, env: dict[str, str], port: int, log: Path) -> None:
        self.module = module
        self.env = env
        self.url = f"http://{HOST}:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def migrate(self) -> None:
        command = [sys.executable, "-m", self.module, "migrate"]
        subprocess.run(command, cwd=REPO, env=self.env, check=True, capture_output=True)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_healthy(self) -> None:
        try:
            async with asyncio.timeout(STARTUP_SECONDS):
                await self._poll_health()
        except TimeoutError:
            raise RuntimeError(f"{self.module} not healthy after {STARTUP_SECONDS:.0f} s:\n{self.log_tail()}") from None

    async def _poll_health(self) -> None:
        assert self.process is not None
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def service_env(
    prefix: str, database_url: str, port: int, redis_url: str, namespace: str, data_dir: Path
) -> dict[str, str]:
    env = scrubbed_environ(SHARED_SETTING_NAMES, (f"{prefix}_",))
    env.update(
        {f"{prefix}_DATABASE_URL": database_url, f"{prefix}_PORT": str(port)},
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=namespace,
        DATA_DIR=str(data_dir),
        JWT_SECRET="outbox-crash-soak-" + secrets.token_hex(24),
        PYTHONUNBUFFERED="1",
        EVENT_RECLAIM_SECONDS="2",  # a dead consumer's messages are taken over quickly
        LOG_LEVEL="INFO",
    )
    return env


@contextmanager
def temporary_databases(server_url: str, *prefixes: str) -> Iterator[list[str]]:
    names = [f"soak_{prefix}_{secrets.token_hex(4)}" for prefix in prefixes]
    created: list[str] = []
    try:
        with psycopg.connect(server_url, autocommit=True) as connection:
            for name in names:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
        yield [server_url.rsplit("/", 1)[0] + "/" + name for name in names]
    finally:
        with psycopg.connect(server_url, autocommit=True) as connection:
            for name in created:
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class KillRecord:
    at_write: int
    targeted: bool
    unsent_not_on_stream: int  # committed, not yet published: the case the outbox exists for
    unsent_on_stream: int  # published, not yet marked sent: will be published again
    drain_seconds: float | None = None  # restart healthy -> those rows marked sent


@dataclass
class Run:
    outcomes: dict[str, str] = field(default_factory=dict)  # email -> "created" | "cut" | "status <n>"
    kills: list[KillRecord] = field(default_factory=list)
    consumer_kills: int = 0
    load_seconds: float = 0.0
    final_drain_seconds: float | None = None


class Soak:
    def __init__(self, args: argparse.Namespace, auth: ServiceProcess, users: ServiceProcess, redis_url: str) -> None:
        self.args = args
        self.auth = auth
        self.users = users
        self.redis = redis.Redis.from_url(redis_url)
        self.stream = event_stream(args.namespace, "user.registered")
        self.run = Run()
        self.auth_up = asyncio.Event()
        self.progress = asyncio.Event()  # set whenever a registration finished
        self.next_write = 0
        self.done_writes = 0
        self.drain_tasks: list[asyncio.Task[None]] = []

    # - load

    async def client(self, http: httpx.AsyncClient) -> None:
        while self.next_write < self.args.writes:
            email = f"soak-{self.next_write:05d}@example.com"
            self.next_write += 1
            self.run.outcomes[email] = await self.register(http, email)
            self.done_writes += 1
            self.progress.set()

    async def register(self, http: httpx.AsyncClient, email: str) -> str:
        body = {"email": email, "password": PASSWORD, "first_name": "Soak"}
        while True:
            await self.auth_up.wait()
            try:
                response = await http.post(f"{self.auth.url}/api/v1/auth/register", json=body)
            except httpx.ConnectError:
                await asyncio.sleep(0.05)  # not even connected: nothing was sent, try again
                continue
            except CONNECTION_LOST:
                return "cut"
            return "created" if response.status_code == 201 else f"status {response.status_code}"

    # - kills

    async def chaos(self, rng: random.Random) -> None:
        writes = self.args.writes
        points = sorted(rng.sample(range(writes // 20, writes - writes // 20), self.args.kills))
        plan = [(point, "auth") for point in points]
        plan += [
            (point, "users")
            for point in rng.sample(range(writes // 10, writes - writes // 10), self.args.consumer_kills)
        ]
        for point, target in sorted(plan):
            while self.done_writes < point:
                self.progress.clear()
                await self.progress.wait()
            if target == "auth":
                await self.kill_auth(point, targeted=rng.random() < 0.5)
            else:
                await self.kill_users()

    async def kill_auth(self, point: int, targeted: bool) -> None:
        if targeted:
            await self.wait_for_unsent_row()
        self.auth_up.clear()
        self.auth.kill()
        unsent = await asyncio.to_thread(self.unsent_rows)
        on_stream = unsent & self.stream_event_ids()
        record = KillRecord(point, targeted, len(unsent - on_stream), len(on_stream))
        self.run.kills.append(record)
        self.auth.start()
        await self.auth.wait_healthy()
        self.auth_up.set()
        self.drain_tasks.append(asyncio.create_task(self.time_drain(record, unsent)))

    async def kill_users(self) -> None:
        self.users.kill()
        self.run.consumer_kills += 1
        self.users.start()
        await self.users.wait_healthy()

    async def wait_for_unsent_row(self) -> None:
        """Poll until the relay has a row it has not marked sent (a commit it is publishing), for
        at most ``TARGETING_SECONDS``."""
        async with await psycopg.AsyncConnection.connect(self.args.auth_database, autocommit=True) as connection:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TARGETING_SECONDS):
                    while not await (
                        await connection.execute("SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT 1")
                    ).fetchone():
                        pass

    def unsent_rows(self) -> set[str]:
        return {
            row[0] for row in query(self.args.auth_database, "SELECT id::text FROM outbox WHERE published_at IS NULL")
        }

    def stream_event_ids(self) -> set[str]:
        return {event.id for event in self.stream_events()}

    def stream_events(self) -> list[Event]:
        entries: Any = self.redis.xrange(self.stream)
        return [msgspec.json.decode(fields[b"event"], type=Event) for _, fields in entries]

    async def time_drain(self, record: KillRecord, ids: set[str]) -> None:
        began = time.monotonic()
        while time.monotonic() - began < DRAIN_LIMIT_SECONDS * 2:
            if not ids or not await asyncio.to_thread(self.still_unsent, ids):
                record.drain_seconds = time.monotonic() - began
                return
            await asyncio.sleep(0.1)

    def still_unsent(self, ids: set[str]) -> bool:
        rows = query(
            self.args.auth_database,
            "SELECT 1 FROM outbox WHERE id::text = ANY(%s) AND published_at IS NULL LIMIT 1",
            list(ids),
        )
        return bool(rows)

    # - the whole of it

    async def execute(self) -> None:
        rng = random.Random(self.args.seed)
        started = time.monotonic()
        self.auth_up.set()
        limits = httpx.Limits(max_keepalive_connections=0)  # no pooled connection outlives a kill
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            clients = [asyncio.create_task(self.client(http)) for _ in range(self.args.concurrency)]
            await self.chaos(rng)
            await asyncio.gather(*clients)
        self.run.load_seconds = time.monotonic() - started
        self.run.final_drain_seconds = await self.wait_until_drained()
        await asyncio.gather(*self.drain_tasks)

    async def wait_until_drained(self) -> float | None:
        """Seconds until every outbox row is sent and every account has its profile (None: > 30 s)."""
        began = time.monotonic()
        while time.monotonic() - began < DRAIN_LIMIT_SECONDS:
            if await asyncio.to_thread(self.drained):
                return time.monotonic() - began
            await asyncio.sleep(0.1)
        return None

    def drained(self) -> bool:
        unsent = query(self.args.auth_database, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]
        accounts = query(self.args.auth_database, "SELECT count(*) FROM users")[0][0]
        profiles = query(self.args.users_database, "SELECT count(*) FROM profiles")[0][0]
        return bool(unsent == 0 and profiles >= accounts)


def query(database_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as connection:
        return list(connection.execute(statement, params).fetchall())


# -- the verdict -----------------------------------------------------------------------------


@dataclass
class Verdict:
    figures: dict[str, Any]
    thresholds: dict[str, bool]


def judge(soak: Soak) -> Verdict:
    args, run = soak.args, soak.run
    accounts = dict(query(args.auth_database, "SELECT id::text, email FROM users"))
    outbox_rows = query(
        args.auth_database,
        "SELECT id::text, payload->>'user_id', payload->>'email', published_at IS NOT NULL"
        " FROM outbox WHERE event_type = 'user.registered'",
    )
    outbox_users = Counter(user_id for _, user_id, _, _ in outbox_rows)
    outbox_ids = {event_id for event_id, _, _, _ in outbox_rows}
    events = soak.stream_events()
    stream_ids = Counter(event.id for event in events)
    profiles = {row[0] for row in query(args.users_database, "SELECT id::text FROM profiles")}
    processed = Counter(
        row[0]
        for row in query(
            args.users_database, "SELECT event_id::text FROM processed_events WHERE event_type = 'user.registered'"
        )
    )
    creations = profile_creations_logged(soak.users.log)

    mismatches = len(set(accounts) ^ set(outbox_users)) + sum(n - 1 for n in outbox_users.values() if n > 1)
    unsent = sum(1 for *_, sent in outbox_rows if not sent)
    lost_on_stream = len(outbox_ids - set(stream_ids))
    lost_profiles = len(set(accounts) - profiles)
    not_processed = len(outbox_ids - set(processed))
    extra_effects = len(profiles - set(accounts)) + len(set(processed) - outbox_ids)

    created = {email for email, outcome in run.outcomes.items() if outcome == "created"}
    cut = {email for email, outcome in run.outcomes.items() if outcome == "cut"}
    refused = len(run.outcomes) - len(created) - len(cut)
    account_emails = set(accounts.values())
    event_emails = {email for _, _, email, _ in outbox_rows}
    cut_committed = cut & account_emails
    cut_absent = cut - account_emails
    unaccounted = (
        len(created - account_emails)  # a 201 without an account
        + len(account_emails - created - cut)  # an account nobody asked for
        + len(cut_absent & event_emails)  # an event for an account that does not exist
    )
    drains = [kill.drain_seconds for kill in run.kills]
    slowest_drain = None if None in drains else max((d for d in drains if d is not None), default=0.0)

    figures = {
        "writes": args.writes,
        "seed": args.seed,
        "concurrency": args.concurrency,
        "load seconds": round(run.load_seconds, 1),
        "responses 201": len(created),
        "connections cut by a kill": len(cut),
        "  of which committed": len(cut_committed),
        "  of which not committed": len(cut_absent),
        "other responses": refused,
        "accounts": len(accounts),
        "user.registered outbox rows": len(outbox_rows),
        "auth kills (SIGKILL)": len(run.kills),
        "  targeted at an unsent row": sum(kill.targeted for kill in run.kills),
        "  between commit and publish": sum(kill.unsent_not_on_stream > 0 for kill in run.kills),
        "  rows committed, unpublished at a kill": sum(kill.unsent_not_on_stream for kill in run.kills),
        "  rows published, unmarked at a kill": sum(kill.unsent_on_stream for kill in run.kills),
        "slowest drain after a restart (s)": None if slowest_drain is None else round(slowest_drain, 2),
        "user service kills (SIGKILL)": run.consumer_kills,
        "final drain (s)": None if run.final_drain_seconds is None else round(run.final_drain_seconds, 2),
        "stream entries": len(events),
        "distinct event ids on the stream": len(stream_ids),
        "duplicate publications": len(events) - len(stream_ids),
        "processed_events (user.registered)": len(processed),
        "profiles": len(profiles),
        "'profile created' log lines": sum(creations.values()),
        "  users with more than one": sum(1 for n in creations.values() if n > 1),
    }
    thresholds = {
        "some kills landed between commit and publish": any(kill.unsent_not_on_stream for kill in run.kills),
        "accounts == outbox rows (0 mismatches)": mismatches == 0,
        f"every outbox row sent, each kill's within {DRAIN_LIMIT_SECONDS:.0f} s": (
            unsent == 0 and slowest_drain is not None and slowest_drain <= DRAIN_LIMIT_SECONDS
        ),
        "0 lost: every event on the stream, processed, with its profile": (
            lost_on_stream == 0 and not_processed == 0 and lost_profiles == 0
        ),
        "0 double-applied: one profile and one processed id per event, nothing else": (
            extra_effects == 0 and len(profiles) == len(accounts) and len(processed) == len(outbox_ids)
        ),
        "every cut registration accounted for (committed with event + profile, or absent)": unaccounted == 0,
    }
    return Verdict(figures, thresholds)


def profile_creations_logged(log: Path) -> Counter[str]:
    """``profile created`` log records per user id (a record written in a transaction a kill then
    rolled back appears too, so this is informative, not a threshold)."""
    creations: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if "profile created" not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "user_id" in record:
            creations[str(record["user_id"])] += 1
    return creations


def report(verdict: Verdict) -> str:
    width = max(len(name) for name in verdict.figures) + 2
    lines = [f"E1 outbox crash soak, {utc_timestamp()}"]
    lines += [f"  {name:<{width}}{value}" for name, value in verdict.figures.items()]
    lines.append("thresholds:")
    lines += [f"  {'met   ' if met else 'MISSED'} {name}" for name, met in verdict.thresholds.items()]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_crash_soak", description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the auth service (the producer)")
    parser.add_argument("--consumer-kills", type=int, default=3, help="SIGKILLs of the user service")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    if args.writes < 100 or not 0 <= args.kills <= args.writes // 2 or not 0 <= args.consumer_kills <= args.writes // 2:
        parser.error("--writes must be at least 100, and the kills at most half the writes")
    return args


async def soak(args: argparse.Namespace, work: Path) -> Verdict:
    auth_port, users_port = free_port(), free_port()
    auth_env = service_env("AUTH", args.auth_database, auth_port, args.redis, args.namespace, work)
    auth_env.update(FAST_ARGON2, AUTH_IP_ATTEMPTS_PER_MINUTE=str(args.writes * 10))
    users_env = service_env("USERS", args.users_database, users_port, args.redis, args.namespace, work)
    auth = ServiceProcess("auth_service", auth_env, auth_port, work / "auth.log")
    users = ServiceProcess("user_service", users_env, users_port, work / "users.log")
    run = Soak(args, auth, users, args.redis)
    try:
        for service in (auth, users):
            service.migrate()
            service.start()
        await asyncio.gather(auth.wait_healthy(), users.wait_healthy())
        say(f"soak: {args.writes} registrations, {args.kills} auth kills, {args.consumer_kills} user service kills")
        await run.execute()
        return judge(run)
    except BaseException:
        for service in (auth, users):
            say(f"--- {service.module} log ---\n{service.log_tail()}")
        raise
    finally:
        for service in (auth, users):
            service.stop()
        run.redis.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.namespace = f"soak-{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="outbox-soak-"))
    try:
        with sigterm_unwinds(), temporary_databases(args.postgres, "auth", "users") as (auth_db, users_db):
            args.auth_database, args.users_database = auth_db, users_db
            verdict = asyncio.run(soak(args, work))
    finally:
        clear_redis_namespace(args.redis, args.namespace)
        shutil.rmtree(work, ignore_errors=True)
    print(report(verdict))
    return 0 if all(verdict.thresholds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
