"""The fault harness (issue 12, RELIABILITY C5, C6, D1-D3, D5, G3): the distributed platform under a
steady mixed load while its dependencies are killed, hung and restarted.

    python -m bench.faults [--scenarios redis-kill,redis-hang,pg-stop,pg-hang,service-kill,airtable-429]
                           [--rate 79] [--seed 1]

Everything is private to the run: a ``redis-server`` on a free port, two PostgreSQL clusters made
by ``initdb`` in temporary folders (one for the user service, the one the PostgreSQL scenarios
stop and hang; one for auth, the Airtable gateway and analytics), the Airtable emulator, the four
services and the gateway as real processes on loopback. The machine's shared servers are never
touched. The load (``--rate`` requests per second, about 79 by default) mixes profile reads and
updates, analytics events, Airtable reads of popular (cached) and unique (uncached) paths and
registrations, all through the gateway.

Each scenario: a few seconds of baseline, the fault, then the recovery, while the load goes on.
What each one must show (the run exits 1 if any check fails):

* ``redis-kill`` (SIGKILL 30 s, restarted empty) and ``redis-hang`` (SIGSTOP 20 s): at most 1 % 5xx on
  the routes that do not need Redis for their own data (all of this load); no request blocked more
  than 200 ms beyond its kind's baseline p99; every kind of request and the usage pipeline flowing
  again within 10 s of the restart.
* ``pg-stop`` (the user service's cluster stopped ``-m immediate`` for 20 s) and ``pg-hang`` (its
  backends ended, then the postmaster SIGSTOPped 20 s, so that a new connection is needed): profile
  routes answer 503 with Retry-After within 2 s; every other kind 0 errors; profile routes 2xx again
  within 3 s of PostgreSQL being back.
* ``service-kill`` (the user service SIGKILLed, restarted after 10 s): every other kind 0 errors;
  its routes 502/503 within 2.2 s; 2xx again within 2 s of it being ready.
* ``airtable-429`` (the emulator answers one 429 for the base; Airtable's 30 s pause follows):
  no further upstream 429; uncached reads 503 within 100 ms while paused; cached paths answered
  (fresh or stale) throughout, 0 errors.
* every scenario: 0 acknowledged writes lost (registrations with their profiles, profile updates,
  event ids, usage records the gateway published).
"""

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import SHARED_SETTING_NAMES, LoggedServer, free_port, say, scrubbed_environ, utc_timestamp
from tests.private_servers import PrivatePostgres, PrivateRedis

REPO = Path(__file__).resolve().parents[1]
JWT_SECRET = "fault-harness-" + secrets.token_hex(24)
EMULATOR_TOKEN = "fault-harness-airtable-token"
BASE = "appEmuOpsBase0000"  # the emulator's default seed: table Tasks, 20 records
TABLE = "Tasks"
PASSWORD = "a long enough fault passphrase"
FAST_ARGON2 = {"ARGON2_MEMORY_KIB": "19456", "ARGON2_TIME_COST": "2", "ARGON2_PARALLELISM": "1"}
REQUEST_TIMEOUT = 10.0
STARTUP_SECONDS = 60.0
PROFILE_KINDS = ("profile_read", "profile_update")
# Requests per second of each kind, for --rate 79; scaled for another rate. Uncached Airtable
# reads stay well under Airtable's 5 requests/s per base.
MIX = {
    "profile_read": 25.0,
    "profile_update": 10.0,
    "event": 20.0,
    "airtable_cached": 20.0,
    "airtable_uncached": 2.0,
    "register": 2.0,
}
POPULAR_PATHS = [f"/api/v1/airtable/v0/{BASE}/{TABLE}?pageSize={size}" for size in (5, 10, 20)]


# -- processes -------------------------------------------------------------------------------


class Process(LoggedServer):
    """One program on loopback (bench.common's LoggedServer) that can also be SIGKILLed and started
    again with the same settings."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int, logs: Path) -> None:
        super().__init__(
            name,
            [sys.executable, *args],
            env,
            port,
            logs / f"{name}.log",
            startup_timeout=STARTUP_SECONDS,
            stop_timeout=10,
            tail_chars=3000,
            cwd=REPO,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def restart(self, ready_path: str) -> None:
        """Started again once killed, in a log of its own (the first one's is kept); back when
        ``ready_path`` answers 200."""
        self.log_path = self.log_path.with_name(f"{self.name}-restarted.log")
        await asyncio.to_thread(self.start, ready_path)


@dataclass
class Platform:
    redis: PrivateRedis
    users_pg: PrivatePostgres  # the cluster the PostgreSQL scenarios stop and hang
    main_pg: PrivatePostgres
    databases: dict[str, str]
    emulator: Process
    services: dict[str, Process]
    gateway: Process

    @property
    def url(self) -> str:
        return self.gateway.base_url


def _env(prefix: str, redis_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """A service's or the gateway's environment: none of this process's settings for it, the
    platform's shared ones, and its own."""
    env = scrubbed_environ(SHARED_SETTING_NAMES, (prefix,))
    env.update(
        REDIS_URL=redis_url,
        REDIS_NAMESPACE="faults",
        DATA_DIR=str(data_dir),
        JWT_SECRET=JWT_SECRET,
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="WARNING",
        ACCESS_LOG="false",
        **settings,
    )
    return env


@contextlib.contextmanager
def platform(workdir: Path) -> Iterator[Platform]:
    """Private Redis and PostgreSQL, the emulator, the services and the gateway; all gone afterwards."""
    redis_server = PrivateRedis().start()
    users_pg = PrivatePostgres().start()
    main_pg = PrivatePostgres().start()
    processes: list[Process] = []
    try:
        databases = {
            "AUTH": main_pg.create_database("pyairtable_auth"),
            "USERS": users_pg.create_database("pyairtable_users"),
            "AIRTABLE_GATEWAY": main_pg.create_database("pyairtable_airtable"),
            "ANALYTICS": main_pg.create_database("pyairtable_analytics"),
        }
        emulator_port = free_port()
        emulator = Process(
            "emulator",
            ["-m", "airtable_gateway", "emulator", "--port", str(emulator_port), "--token", EMULATOR_TOKEN],
            scrubbed_environ(SHARED_SETTING_NAMES, ("AIRTABLE",)) | {"PYTHONUNBUFFERED": "1"},
            emulator_port,
            workdir,
        )
        processes.append(emulator)
        modules = {
            "AUTH": "auth_service",
            "USERS": "user_service",
            "AIRTABLE_GATEWAY": "airtable_gateway",
            "ANALYTICS": "analytics_service",
        }
        services: dict[str, Process] = {}
        for prefix, module in modules.items():
            port = free_port()
            own = {f"{prefix}_DATABASE_URL": databases[prefix], f"{prefix}_PORT": str(port)}
            env = _env(f"{prefix}_", redis_server.url, workdir, **own)
            if prefix == "AUTH":
                env.update(FAST_ARGON2, IP_ATTEMPTS_PER_MINUTE="100000", AUTH_IP_ATTEMPTS_PER_MINUTE="100000")
            if prefix == "AIRTABLE_GATEWAY":
                env.update(
                    AIRTABLE_TOKEN=EMULATOR_TOKEN,
                    AIRTABLE_API_URL=emulator.base_url,
                    AIRTABLE_TOKEN_ENCRYPTION_KEY=secrets.token_hex(32),
                    CACHE_TTL="3",  # popular entries expire during the 30 s pause: served stale
                    AIRTABLE_GRANT_ALL="write",  # the load's fresh accounts' organisations reach the base
                )
            subprocess.run(
                [sys.executable, "-m", module, "migrate"], cwd=REPO, env=env, check=True, capture_output=True
            )
            services[module] = Process(module, ["-m", module, "serve"], env, port, workdir)
        processes.extend(services.values())
        gateway_port = free_port()
        gateway_env = _env(
            "GATEWAY_",
            redis_server.url,
            workdir,
            GATEWAY_PORT=str(gateway_port),
            AUTH_SERVICE_URL=services["auth_service"].base_url,
            USER_SERVICE_URL=services["user_service"].base_url,
            AIRTABLE_GATEWAY_URL=services["airtable_gateway"].base_url,
            ANALYTICS_SERVICE_URL=services["analytics_service"].base_url,
            # One client address sends the whole load: the limits must not be what is measured.
            RATE_LIMIT_PER_MINUTE="1000000",
            RATE_LIMIT_BURST="100000",
            AUTH_RATE_LIMIT_PER_MINUTE="1000000",
            AUTH_RATE_LIMIT_BURST="100000",
        )
        gateway = Process("gateway", ["-m", "gateway", "serve"], gateway_env, gateway_port, workdir)
        processes.append(gateway)
        asyncio.run(_start_all(emulator, [*services.values(), gateway]))
        yield Platform(redis_server, users_pg, main_pg, databases, emulator, services, gateway)
    finally:
        for process in reversed(processes):
            process.stop()
        redis_server.stop()
        users_pg.destroy()
        main_pg.destroy()


async def _start_all(emulator: Process, others: list[Process]) -> None:
    """Every process started and answering, all at once."""
    await asyncio.gather(
        asyncio.to_thread(emulator.start, "/_emulator/health"),
        *(asyncio.to_thread(process.start, "/health") for process in others),
    )


# -- the load --------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    started: float  # seconds since the run began
    latency: float
    status: int  # 0: no answer (connection refused, reset, timeout)
    retry_after: bool = False
    cache: str = ""


@dataclass
class Account:
    email: str
    token: str
    user_id: str
    updating: bool = False
    acknowledged_bio: str | None = None
    sent_bios: list[str] = field(default_factory=list)


@dataclass
class Ledger:
    """What the platform acknowledged: checked against what it holds at the end."""

    registered: list[Account] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    attempted_event_ids: set[str] = field(default_factory=set)


class Load:
    def __init__(self, base_url: str, rate: float, rng: random.Random) -> None:
        self.base_url = base_url
        self.rng = rng
        self.results: list[Result] = []
        self.ledger = Ledger()
        self.accounts: list[Account] = []
        self.began = time.monotonic()
        self.kinds = self._schedule(rate)
        self.running = True
        self.tasks: set[asyncio.Task[None]] = set()
        self.uncached_counter = itertools.count()

    @staticmethod
    def _schedule(rate: float) -> list[tuple[float, str]]:
        """One second of the mix, as (offset, kind) pairs evenly spread."""
        scale = rate / sum(MIX.values())
        plan: list[tuple[float, str]] = []
        for kind, per_second in MIX.items():
            count = max(1, round(per_second * scale))
            plan += [((index + 0.5) / count, kind) for index in range(count)]
        return sorted(plan)

    def now(self) -> float:
        return time.monotonic() - self.began

    async def prepare(self, client: httpx.AsyncClient, accounts: int = 20) -> None:
        for _ in range(accounts):
            response = await self._register(client)
            if response.status_code != 201:
                raise RuntimeError(f"could not register the load's accounts: {response.status_code} {response.text}")
        self.accounts = list(self.ledger.registered)

    async def run(self, client: httpx.AsyncClient) -> None:
        second = 0
        while self.running:
            start = self.began + second
            for offset, kind in self.kinds:
                delay = start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not self.running:
                    break
                task = asyncio.create_task(self._one(client, kind))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            second += 1
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, kind: str) -> None:
        started = self.now()
        try:
            response = await getattr(self, f"_{kind}")(client)
        except httpx.HTTPError:
            response = None
        if response is None and kind == "profile_update":
            return  # every account was busy: nothing was sent
        latency = self.now() - started
        status = response.status_code if isinstance(response, httpx.Response) else 0
        retry_after = isinstance(response, httpx.Response) and "retry-after" in response.headers
        cache = response.headers.get("x-cache", "") if isinstance(response, httpx.Response) else ""
        self.results.append(Result(kind, started, latency, status, retry_after, cache))

    def _headers(self, account: Account) -> dict[str, str]:
        return {"Authorization": f"Bearer {account.token}"}

    async def _profile_read(self, client: httpx.AsyncClient) -> httpx.Response:
        account = self.rng.choice(self.accounts)
        return await client.get(f"{self.base_url}/api/v1/users/me", headers=self._headers(account))

    async def _profile_update(self, client: httpx.AsyncClient) -> httpx.Response | None:
        idle = [account for account in self.accounts if not account.updating]
        if not idle:
            return None
        account = self.rng.choice(idle)
        bio = f"bio {uuid.uuid4().hex}"
        account.updating = True
        account.sent_bios.append(bio)
        try:
            response = await client.patch(
                f"{self.base_url}/api/v1/users/me", json={"bio": bio}, headers=self._headers(account)
            )
        finally:
            account.updating = False
        if response.status_code == 200:
            account.acknowledged_bio = bio
        return response

    async def _event(self, client: httpx.AsyncClient) -> httpx.Response:
        account = self.rng.choice(self.accounts)
        event_id = str(uuid.uuid4())
        self.ledger.attempted_event_ids.add(event_id)
        response = await client.post(
            f"{self.base_url}/api/v1/analytics/events",
            json={"event_type": "page_view", "event_id": event_id, "properties": {"page": "/faults"}},
            headers=self._headers(account),
        )
        if response.status_code == 202:
            self.ledger.event_ids.add(event_id)
        return response

    async def _airtable_cached(self, client: httpx.AsyncClient) -> httpx.Response:
        account = self.rng.choice(self.accounts)
        return await client.get(f"{self.base_url}{self.rng.choice(POPULAR_PATHS)}", headers=self._headers(account))

    async def _airtable_uncached(self, client: httpx.AsyncClient) -> httpx.Response:
        account = self.rng.choice(self.accounts)
        formula = f"NOT({{Name}} = 'x{next(self.uncached_counter)}-{uuid.uuid4().hex[:6]}')"
        return await client.get(
            f"{self.base_url}/api/v1/airtable/v0/{BASE}/{TABLE}",
            params={"filterByFormula": formula},
            headers=self._headers(account),
        )

    async def _register(self, client: httpx.AsyncClient) -> httpx.Response:
        email = f"fault-{uuid.uuid4().hex[:12]}@example.com"
        body = {"email": email, "password": PASSWORD}
        response = await client.post(f"{self.base_url}/api/v1/auth/register", json=body)
        if response.status_code == 201:
            answer = response.json()
            self.ledger.registered.append(Account(email, answer["access_token"], answer["user"]["id"]))
        return response


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class Window:
    name: str
    start: float
    end: float


@dataclass
class Outcome:
    scenario: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


WARMUP_SECONDS = 8.0
BASELINE_SECONDS = 6.0
RECOVERY_SECONDS = 15.0


class Harness:
    def __init__(self, platform: Platform, load: Load) -> None:
        self.platform = platform
        self.load = load

    async def scenario(self, name: str) -> Outcome:
        action = getattr(self, "_" + name.replace("-", "_"))
        baseline_start = self.load.now()
        await asyncio.sleep(BASELINE_SECONDS)
        baseline = Window("baseline", baseline_start, self.load.now())
        say(f"  {name}: fault")
        fault, back = await action()
        usage_lag = asyncio.create_task(self.usage_flowing_again(back))
        await asyncio.sleep(RECOVERY_SECONDS)
        await asyncio.sleep(REQUEST_TIMEOUT)  # every request of the window has its answer
        outcome = judge(name, self.load, baseline, fault, back)
        if name.startswith("redis"):
            lag = await usage_lag
            outcome.check("usage counted again ≤ 10 s after Redis is back", lag is not None and lag <= 10, f"{lag}")
        else:
            usage_lag.cancel()
        return outcome

    async def usage_flowing_again(self, back: float) -> float | None:
        """Seconds from ``back`` until analytics has counted every usage record the gateway had
        published one second after it (None: not within 30 s)."""
        await asyncio.sleep(1.0)
        target = await asyncio.to_thread(gateway_usage_sent, self.platform)
        while self.load.now() - back < 30:
            if await asyncio.to_thread(usage_counted, self.platform) >= target:
                return self.load.now() - back
            await asyncio.sleep(0.25)
        return None

    # Each fault returns (the fault's window, when the dependency was back and ready).

    async def _held(
        self, label: str, seconds: float, inflict: Callable[[], object], repair: Callable[[], object]
    ) -> tuple[Window, float]:
        """``inflict`` the fault, keep it ``seconds`` under load, then ``repair`` it (both off the
        event loop, so the load keeps its pace while a server stops or starts)."""
        start = self.load.now()
        await asyncio.to_thread(inflict)
        await asyncio.sleep(seconds)
        end = self.load.now()
        await asyncio.to_thread(repair)
        return Window(label, start, end), self.load.now()

    async def _redis_kill(self) -> tuple[Window, float]:
        redis = self.platform.redis
        return await self._held("redis down", 30, redis.kill, redis.start)

    async def _redis_hang(self) -> tuple[Window, float]:
        redis = self.platform.redis
        return await self._held("redis hung", 20, redis.hang, redis.resume)

    async def _pg_stop(self) -> tuple[Window, float]:
        postgres = self.platform.users_pg
        return await self._held("users' PostgreSQL stopped", 20, postgres.stop, postgres.start)

    async def _pg_hang(self) -> tuple[Window, float]:
        # End the service's connections first, so that its next request needs a new one.
        with psycopg.connect(self.platform.users_pg.url, autocommit=True) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'pyairtable_users'"
            )
        postgres = self.platform.users_pg
        return await self._held("users' postmaster hung", 20, postgres.hang, postgres.resume)

    async def _service_kill(self) -> tuple[Window, float]:
        users = self.platform.services["user_service"]
        start = self.load.now()
        users.kill()
        await asyncio.sleep(10)
        await users.restart("/ready")
        ready = self.load.now()
        return Window("user service killed", start, ready), ready

    async def _airtable_429(self) -> tuple[Window, float]:
        stats_before = await self.emulator_stats()
        self.throttled_before = sum(stats_before.get("throttled", {}).values())
        start = self.load.now()
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(
                f"{self.platform.emulator.base_url}/_emulator/fail", json={"base": BASE, "status": 429, "count": 1}
            )
            response.raise_for_status()
        await asyncio.sleep(32)  # the 30 s pause and a little after
        return Window("Airtable paused", start, self.load.now()), self.load.now()

    async def emulator_stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as client:
            return dict((await client.get(f"{self.platform.emulator.base_url}/_emulator/stats")).json())


def _in(results: list[Result], window: Window, kinds: tuple[str, ...] | None = None) -> list[Result]:
    return [r for r in results if window.start <= r.started < window.end and (kinds is None or r.kind in kinds)]


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _errors(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status == 0 or r.status >= 500]


def _recovered_at(results: list[Result], after: float, kinds: tuple[str, ...]) -> float | None:
    """The time from which every request of these kinds succeeded (None: never within the run)."""
    relevant = sorted((r for r in results if r.kind in kinds and r.started >= after - 30), key=lambda r: r.started)
    last_failure = max((r.started for r in relevant if r.status == 0 or r.status >= 500), default=None)
    later = [r.started for r in relevant if r.started >= after and (last_failure is None or r.started > last_failure)]
    return later[0] if later else None


def judge(name: str, load: Load, baseline: Window, fault: Window, back: float) -> Outcome:
    outcome = Outcome(name)
    results = load.results
    during = _in(results, fault)
    after = Window("after", back, back + RECOVERY_SECONDS)
    base_p99 = {kind: _p99([r.latency for r in _in(results, baseline, (kind,))]) for kind in MIX}
    outcome.figures["requests during the fault"] = len(during)
    outcome.figures["errors during the fault"] = dict(Counter(r.kind for r in _errors(during)))
    outcome.figures["baseline p99 ms"] = {kind: round(value * 1000, 1) for kind, value in base_p99.items()}

    if name in ("redis-kill", "redis-hang"):
        errors = _errors(during)
        share = len(errors) / max(1, len(during))
        outcome.check("≤ 1 % 5xx while Redis is out", share <= 0.01, f"{len(errors)} of {len(during)} ({share:.2%})")
        blocked = [r for r in during if r.latency > base_p99[r.kind] + 0.2]
        worst = max((r.latency for r in during), default=0.0)
        where = ", ".join(f"{r.kind} +{r.started - fault.start:.2f} s: {r.latency * 1000:.0f} ms" for r in blocked[:10])
        outcome.check(
            "no request blocked > 200 ms beyond its baseline p99",
            not blocked,
            f"{len(blocked)} blocked; slowest {worst * 1000:.0f} ms; {where}",
        )
        recovered = _recovered_at(results, back, tuple(MIX))
        lag = None if recovered is None else max(0.0, recovered - back)
        outcome.check("every kind flowing ≤ 10 s after Redis is back", lag is not None and lag <= 10, f"{lag}")
    elif name in ("pg-stop", "pg-hang"):
        affected = [r for r in during if r.kind in PROFILE_KINDS]
        slow_or_wrong = [
            r for r in affected if r.status not in range(200, 300) and not (r.status == 503 and r.retry_after)
        ]
        late = [r for r in affected if r.status == 503 and r.latency > 2.0]
        outcome.check(
            "profile routes: 503 + Retry-After (or 2xx)",
            not slow_or_wrong,
            f"{len(slow_or_wrong)} other answers: {Counter(r.status for r in slow_or_wrong)}",
        )
        outcome.check(
            "profile routes: every 503 within 2 s",
            not late,
            f"{len(late)} late; slowest {max((r.latency for r in affected), default=0) * 1000:.0f} ms",
        )
        others = _errors([r for r in during if r.kind not in PROFILE_KINDS])
        outcome.check("other services: 0 errors", not others, f"{Counter(r.kind for r in others)}")
        recovered = _recovered_at(results, back, PROFILE_KINDS)
        lag = None if recovered is None else max(0.0, recovered - back)
        outcome.check("profile routes 2xx ≤ 3 s after PostgreSQL is back", lag is not None and lag <= 3, f"{lag}")
    elif name == "service-kill":
        affected = [r for r in during if r.kind in PROFILE_KINDS]
        wrong = [r for r in affected if r.status not in (200, 502, 503) or r.latency > 2.2]
        outcome.check("its routes: 502/503 within 2.2 s", not wrong, f"{len(wrong)} otherwise")
        others = _errors([r for r in during if r.kind not in PROFILE_KINDS and r.kind != "register"])
        outcome.check("other routes: 0 errors", not others, f"{Counter(r.kind for r in others)}")
        recovered = _recovered_at(results, back, PROFILE_KINDS)
        lag = None if recovered is None else max(0.0, recovered - back)
        outcome.check("its routes 2xx ≤ 2 s after it is ready", lag is not None and lag <= 2, f"{lag}")
    elif name == "airtable-429":
        uncached = _in(results, fault, ("airtable_uncached",))
        paused = Window("paused", fault.start + 0.5, fault.start + 29.5)
        refused = [r for r in _in(results, paused, ("airtable_uncached",))]
        wrong = [r for r in refused if not (r.status == 503 and r.retry_after and r.latency <= 0.1)]
        outcome.check(
            "uncached reads while paused: 503 + Retry-After within 100 ms",
            bool(refused) and not wrong,
            f"{len(wrong)} of {len(refused)} otherwise; statuses {Counter(r.status for r in uncached)}",
        )
        cached = _in(results, Window("during and after", fault.start, after.end), ("airtable_cached",))
        bad = _errors(cached) + [r for r in cached if r.status != 200]
        outcome.check(
            "cached paths answered throughout (fresh or stale)",
            not bad,
            f"{len(bad)} not 200 of {len(cached)}; X-Cache {Counter(r.cache for r in cached)}",
        )
        others = _errors([r for r in during if not r.kind.startswith("airtable")])
        outcome.check("other routes: 0 errors", not others, f"{Counter(r.kind for r in others)}")
    return outcome


# -- what was acknowledged is there ----------------------------------------------------------


async def check_writes(platform: Platform, load: Load) -> Outcome:
    outcome = Outcome("acknowledged writes")
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        missing_profiles: list[str] = []
        wrong_bios: list[str] = []
        while True:
            missing_profiles, wrong_bios = [], []
            for account in load.ledger.registered:
                response = await client.get(
                    f"{platform.url}/api/v1/users/me", headers={"Authorization": f"Bearer {account.token}"}
                )
                if response.status_code != 200:
                    missing_profiles.append(account.email)
                elif not _update_kept(account, response.json().get("bio")):
                    wrong_bios.append(account.email)
            if (not missing_profiles and not wrong_bios) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    outcome.check(
        "every registration acknowledged has its profile",
        not missing_profiles,
        f"{len(missing_profiles)} of {len(load.ledger.registered)} missing",
    )
    outcome.check("every acknowledged profile update kept", not wrong_bios, f"{len(wrong_bios)} lost")
    stored = _query(platform.databases["ANALYTICS"], "SELECT event_id FROM events WHERE event_id IS NOT NULL")
    stored_ids = {str(row[0]) for row in stored}
    lost = load.ledger.event_ids - stored_ids
    outcome.check("every acknowledged event stored", not lost, f"{len(lost)} of {len(load.ledger.event_ids)} lost")
    sent, counted = await usage_counts(platform)
    outcome.figures["usage records published"] = sent
    outcome.figures["usage records counted"] = counted
    outcome.check("every usage record published is counted", counted >= sent, f"{counted} counted, {sent} published")
    return outcome


def _update_kept(account: Account, stored: str | None) -> bool:
    """The acknowledged update is stored, or one sent after it (whose answer may have been lost)."""
    if account.acknowledged_bio is None:
        return True
    sent = account.sent_bios
    return stored in sent and sent.index(stored) >= sent.index(account.acknowledged_bio)


async def usage_counts(platform: Platform) -> tuple[int, int]:
    """(records the gateway published, records analytics counted), once analytics has caught up
    or after 30 s."""
    deadline = time.monotonic() + 30
    sent = counted = 0
    while time.monotonic() < deadline:
        sent = await asyncio.to_thread(gateway_usage_sent, platform)
        counted = await asyncio.to_thread(usage_counted, platform)
        if counted >= sent:
            break
        await asyncio.sleep(1)
    return sent, counted


def gateway_usage_sent(platform: Platform) -> int:
    text = httpx.get(f"{platform.url}/metrics", timeout=5).text
    prefix = "pyairtable_gateway_usage_sent_total"
    return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)))


def usage_counted(platform: Platform) -> int:
    rows = _query(platform.databases["ANALYTICS"], "SELECT coalesce(sum(calls), 0) FROM endpoint_hourly")
    return int(rows[0][0])


def _query(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=5) as connection:
        return list(connection.execute(statement).fetchall())


# -- the run ---------------------------------------------------------------------------------

SCENARIOS = ("redis-kill", "redis-hang", "pg-stop", "pg-hang", "service-kill", "airtable-429")


async def run_scenarios(platform: Platform, args: argparse.Namespace) -> list[Outcome]:
    load = Load(platform.url, args.rate, random.Random(args.seed))
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
        await load.prepare(client)
        runner = asyncio.create_task(load.run(client))
        await asyncio.sleep(WARMUP_SECONDS)  # first connections and cold caches are not the baseline
        harness = Harness(platform, load)
        outcomes = []
        for name in args.scenarios:
            say(f"scenario {name}")
            outcome = await harness.scenario(name)
            if name == "airtable-429":
                stats = await harness.emulator_stats()
                extra = sum(stats.get("throttled", {}).values()) - harness.throttled_before - 1
                outcome.check("0 extra upstream 429s", extra <= 0, f"{max(0, extra)} extra")
            outcomes.append(outcome)
            report_outcome(outcome)
        load.running = False
        await runner
    statuses: dict[str, Counter[int]] = {}
    for result in load.results:
        statuses.setdefault(result.kind, Counter())[result.status] += 1
    print("\n### answers of the whole run, by kind and status")
    for kind, counts in statuses.items():
        print(f"- {kind}: {dict(sorted(counts.items()))}")
    writes = await check_writes(platform, load)
    report_outcome(writes)
    outcomes.append(writes)
    return outcomes


def report_outcome(outcome: Outcome) -> None:
    print(f"\n### {outcome.scenario}")
    for name, ok, detail in outcome.checks:
        print(f"- {'met' if ok else 'MISSED'}: {name} ({detail})")
    for name, value in outcome.figures.items():
        print(f"- {name}: {value}")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, in this order")
    parser.add_argument("--rate", type=float, default=79.0, help="requests per second of the mixed load")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pyairtable-faults-"))
    print(f"# Fault harness, {utc_timestamp()}: {', '.join(args.scenarios)} at {args.rate:g} req/s")
    with platform(workdir) as running:
        outcomes = asyncio.run(run_scenarios(running, args))
    missed = [outcome.scenario for outcome in outcomes if not outcome.passed]
    if missed:
        print(f"\nMISSED in: {', '.join(missed)} (the processes' logs: {workdir})")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print("\nevery check met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
