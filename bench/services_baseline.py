"""The baseline of ``bench/services.py``: a minimal Litestar + psycopg app doing the services' work.

    BASELINE_JWT_SECRET=... BASELINE_REDIS_URL=... BASELINE_REDIS_NAMESPACE=... \\
    BASELINE_AUTH_DSN=... BASELINE_USERS_DSN=... BASELINE_ANALYTICS_DSN=... \\
    uvicorn bench.services_baseline:app

Each route does what the service's route must do and nothing else, on the services' own
databases and Redis: verify the HS256 access token (PyJWT, the same algorithm and claims), read
the three revocation keys in one ``MGET`` (the services' one Redis round trip), then the same SQL
statement as the service (one primary-key read, the events insert with its hourly counts, the
usage rows) or, for the Airtable cache hit, one Redis ``GET`` of the cached answer; the answer
is encoded with msgspec. A psycopg pool per database, no ORM, no middleware, no metrics, no logs:
as cheap as the same work gets with these libraries.
"""

import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import jwt
import msgspec
import redis.asyncio
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import NotAuthorizedException
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

AUDIENCE, ISSUER = "pyairtable-api", "pyairtable-auth"
_json = msgspec.json.Encoder()
_INSERT_EVENT = """
    WITH inserted AS (
        INSERT INTO events (event_id, user_id, session_id, event_type, properties, ip, user_agent, occurred_at,
                            received_at)
        SELECT e.event_id, e.user_id, e.session_id, e.event_type, e.properties, e.ip, e.user_agent, e.occurred_at,
               e.received_at
        FROM json_to_recordset(CAST(%s AS json)) AS e(
            event_id uuid, user_id text, session_id text, event_type text, properties jsonb, ip text,
            user_agent text, occurred_at timestamptz, received_at timestamptz)
        ORDER BY e.user_id, e.event_id
        ON CONFLICT (user_id, event_id) DO NOTHING
        RETURNING user_id, event_id, event_type, occurred_at,
                  CASE WHEN event_type = 'llm_usage' THEN (properties->>'cost_usd')::numeric END AS cost_usd
    ), hourly AS (
        INSERT INTO event_hourly (hour, event_type, shard, events, cost_usd)
        SELECT date_trunc('hour', occurred_at, 'UTC'), event_type, pg_backend_pid() %% 16, count(*),
               coalesce(sum(cost_usd), 0)
        FROM inserted
        GROUP BY 1, 2
        ORDER BY 1, 2
        ON CONFLICT (hour, event_type, shard) DO UPDATE
        SET events = event_hourly.events + excluded.events, cost_usd = event_hourly.cost_usd + excluded.cost_usd
    )
    SELECT user_id, event_id::text FROM inserted
"""


class Baseline:
    def __init__(self) -> None:
        self.secret = os.environ["BASELINE_JWT_SECRET"]
        self.namespace = os.environ["BASELINE_REDIS_NAMESPACE"]
        self.airtable_cache_key = os.environ.get("BASELINE_AIRTABLE_CACHE_KEY", "")
        self.redis = redis.asyncio.Redis.from_url(os.environ["BASELINE_REDIS_URL"])
        # A database without its DSN has no pool (the Airtable benchmark needs Redis alone).
        dsns = {name: os.environ.get(f"BASELINE_{name.upper()}_DSN") for name in ("auth", "users", "analytics")}
        self.pools = {
            name: AsyncConnectionPool(dsn, min_size=5, max_size=10, open=False) for name, dsn in dsns.items() if dsn
        }

    async def identity(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """The verified claims of the bearer token, refused when revoked (one MGET)."""
        _scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
            )
        except jwt.PyJWTError:
            raise NotAuthorizedException() from None
        ns = self.namespace
        keys = [f"{ns}:revoked:jti:{ISSUER}:{claims['jti']}", f"{ns}:revoked:sid:{claims.get('sid')}"]
        jti, sid, cutoff = await self.redis.mget([*keys, f"{ns}:revoked:user:{claims['sub']}"])
        if jti is not None or sid is not None or (cutoff is not None and claims["iat"] <= int(cutoff)):
            raise NotAuthorizedException()
        return claims

    async def one_row(self, database: str, sql: str, *params: Any) -> dict[str, Any] | None:
        async with self.pools[database].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def all_rows(self, database: str, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with self.pools[database].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()


def _answer(value: Any, status_code: int = 200) -> Response[bytes]:
    return Response(_json.encode(value), media_type="application/json", status_code=status_code)


@get("/api/v1/users/me")
async def users_me(request: Request[Any, Any, Any]) -> Response[bytes]:
    base: Baseline = request.app.state.baseline
    claims = await base.identity(request)
    row = await base.one_row("users", "SELECT * FROM profiles WHERE id = %s", uuid.UUID(claims["sub"]))
    return _answer(row)


@get("/api/v1/auth/me")
async def auth_me(request: Request[Any, Any, Any]) -> Response[bytes]:
    base: Baseline = request.app.state.baseline
    claims = await base.identity(request)
    row = await base.one_row("auth", "SELECT * FROM users WHERE id = %s", uuid.UUID(claims["sub"]))
    if row is None:
        raise NotAuthorizedException()
    del row["password_hash"]
    return _answer(row)


class EventIn(msgspec.Struct):
    event_type: str
    properties: dict[str, Any] = {}
    event_id: str | None = None


@post("/api/v1/analytics/events")
async def record_event(request: Request[Any, Any, Any]) -> Response[bytes]:
    base: Baseline = request.app.state.baseline
    claims = await base.identity(request)
    item = msgspec.json.decode(await request.body(), type=EventIn)
    now = datetime.now(UTC)
    row = {
        "event_id": item.event_id or str(uuid.uuid4()),
        "user_id": claims["sub"],
        "session_id": None,
        "event_type": item.event_type,
        "properties": item.properties,
        "ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent"),
        "occurred_at": now,
        "received_at": now,
    }
    async with base.pools["analytics"].connection() as conn:
        inserted = await (await conn.execute(_INSERT_EVENT, [_json.encode([row]).decode()])).fetchall()
    return _answer({"event_id": row["event_id"], "status": "accepted" if inserted else "duplicate"}, 202)


@get("/api/v1/analytics/usage/me")
async def usage_me(request: Request[Any, Any, Any]) -> Response[bytes]:
    base: Baseline = request.app.state.baseline
    claims = await base.identity(request)
    end = date.today()
    start = end - timedelta(days=29)
    rows = await base.all_rows(
        "analytics",
        "SELECT * FROM usage_daily WHERE user_id = %s AND day >= %s AND day <= %s ORDER BY day",
        claims["sub"],
        start,
        end,
    )
    return _answer({"user_id": claims["sub"], "start": start, "end": end, "items": rows})


@get("/api/v1/airtable/cached")
async def airtable_cached(request: Request[Any, Any, Any]) -> Response[bytes]:
    base: Baseline = request.app.state.baseline
    await base.identity(request)
    cached = await base.redis.get(base.airtable_cache_key)
    return Response(cached or b"{}", media_type="application/json")


@get("/health")
async def health() -> dict[str, float]:
    return {"at": time.time()}


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    baseline = Baseline()
    for pool in baseline.pools.values():
        await pool.open(wait=True)
    app.state.baseline = baseline
    try:
        yield
    finally:
        for pool in baseline.pools.values():
            await pool.close()
        await baseline.redis.aclose()


app = Litestar(
    route_handlers=[users_me, auth_me, record_event, usage_me, airtable_cached, health],
    lifespan=[lifespan],
    logging_config=None,
)
