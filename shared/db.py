"""Async SQLAlchemy for PostgreSQL (psycopg 3) and SQLite (aiosqlite); one transaction per request."""

import asyncio
import contextlib
import logging
import math
import select
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from litestar import Request, Response
from litestar.datastructures import State
from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import DateTime, MetaData, Select, Table, TextualSelect, event, make_url, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, InvalidRequestError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlalchemy.util import greenlet_spawn

from shared.errors import Problem, internal_error_handler, problem_response
from shared.settings import ServiceSettings

logger = logging.getLogger("shared.db")

# Every constraint and index gets a name from its table and columns, so a migration can drop or
# alter it by name on PostgreSQL and SQLite alike (SQLite's own names are empty).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata() -> MetaData:
    """The MetaData of one service's tables (each service has its own database, so its own)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(settings: ServiceSettings) -> AsyncEngine:
    url = settings.sqlalchemy_url()
    if url.startswith("sqlite"):
        settings.data_path.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 15}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        hide_parameters=True,  # an error's SQL parameters (hashes, emails) never reach a log line
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_connect_timeout_seconds,
        pool_recycle=1800,
        async_creator=_bounded_connect(settings),
    )
    event.listen(engine.sync_engine, "checkout", _refuse_dropped_connection)
    POOL_METRICS.track(settings.service_name, engine, capacity=2 * settings.db_pool_size)
    return engine


def _refuse_dropped_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A connection PostgreSQL dropped (a restart, a terminated backend) is replaced, not used.

    An idle pooled connection has nothing to read: a server that ends it sends its last message
    (FATAL) and closes the socket, which makes the socket readable. So one non-blocking poll of the
    socket tells a dropped connection without the round trip of SQLAlchemy's ``pool_pre_ping``
    (a ``SELECT 1`` per checkout, a quarter of a primary-key read's cost). DisconnectionError makes
    the pool discard it and check out (or connect) another."""
    connection: psycopg.AsyncConnection[Any] = dbapi_connection.driver_connection
    if connection.broken or connection.closed:
        raise DisconnectionError("the connection is closed")
    try:
        readable, _, _ = select.select([connection.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        raise DisconnectionError("the connection's socket is gone") from None
    if readable:  # a server's goodbye (or a stray notice on an idle connection: replaced all the same)
        raise DisconnectionError("the server ended the connection")


class PoolMetrics(Collector):
    """Each service's PostgreSQL pool, read at scrape time (two integer reads, nothing per query):
    connections checked out, and the most it can hand out (pool size + overflow). A pool at its
    capacity makes requests wait up to DB_CONNECT_TIMEOUT_SECONDS, then answer 503."""

    def __init__(self) -> None:
        self.pools: dict[str, tuple[AsyncEngine, int]] = {}  # the service's latest engine

    def track(self, service: str, engine: AsyncEngine, capacity: int) -> None:
        self.pools[service] = (engine, capacity)

    def collect(self) -> Iterator[Metric]:
        checked_out = GaugeMetricFamily(
            "pyairtable_db_pool_checked_out", "Database connections in use by the service", labels=["service"]
        )
        capacity = GaugeMetricFamily(
            "pyairtable_db_pool_capacity",
            "Database connections the service's pool may hand out (DB_POOL_SIZE + as many overflow)",
            labels=["service"],
        )
        for service, (engine, most) in list(self.pools.items()):
            checked_out.add_metric([service], engine.pool.checkedout())  # type: ignore[attr-defined]
            capacity.add_metric([service], most)
        yield checked_out
        yield capacity


POOL_METRICS = PoolMetrics()
REGISTRY.register(POOL_METRICS)


def _bounded_connect(settings: ServiceSettings) -> Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]:
    """Connections made within DB_CONNECT_TIMEOUT_SECONDS, with the statement timeout set.

    libpq's ``connect_timeout`` has a floor of 2 s and a hung server (postmaster stopped) would hold
    the request that long or longer, so the connect is bounded here; a connect that times out is an
    OperationalError like a refused one, which the kernel answers with a 503. After a failed
    connect, one connect at a time probes the server and the others fail at once: requests queued
    behind connects that will time out (pool wait + connect) would otherwise take longer than 2 s."""
    conninfo = make_url(settings.sqlalchemy_url()).set(drivername="postgresql").render_as_string(hide_password=False)
    timeout = settings.db_connect_timeout_seconds
    gate = _ConnectGate()

    async def connect() -> psycopg.AsyncConnection[Any]:
        gate.enter()
        try:
            async with asyncio.timeout(timeout):
                connection = await psycopg.AsyncConnection.connect(
                    conninfo,
                    connect_timeout=max(2, math.ceil(timeout)),
                    options=f"-c statement_timeout={settings.db_statement_timeout_ms}",
                )
        except TimeoutError:
            gate.failed()
            raise psycopg.OperationalError(f"connection not made within {timeout} s") from None
        except BaseException:
            gate.failed()
            raise
        gate.succeeded()
        return connection

    return connect


class _ConnectGate:
    """After a failed connect, connects are refused at once (as a refused connect would be) for
    ``PROBE_INTERVAL_SECONDS``, then one at a time goes to the server as a probe until one succeeds.
    (SQLAlchemy reconnects a second time within one checkout: without the pause, one request could
    wait out two connect timeouts.)"""

    PROBE_INTERVAL_SECONDS = 0.5

    def __init__(self) -> None:
        self.failing = False
        self.probing = False
        self.next_probe = 0.0

    def enter(self) -> None:
        if not self.failing:
            return
        if self.probing or time.monotonic() < self.next_probe:
            raise psycopg.OperationalError("the database did not answer the last connect; retry later")
        self.probing = True

    def failed(self) -> None:
        self.failing = True
        self.probing = False
        self.next_probe = time.monotonic() + self.PROBE_INTERVAL_SECONDS

    def succeeded(self) -> None:
        self.failing = False
        self.probing = False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # A Session subclass of its own, so session events (the outbox relay's) stay per service.
    session_class = type("ServiceSession", (Session,), {})
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=session_class)


async def provide_db_session(state: State) -> AsyncGenerator[AsyncSession, None]:
    """One transaction per request: committed after the handler, rolled back if it raises, unless
    the error says the work done so far must stand (``commit_before_answer``, e.g. a logout whose
    sessions are revoked in the database though Redis could not record it). A session the handler
    never used is neither committed nor closed: the hottest reads go through DirectStatements."""
    sessionmaker: async_sessionmaker[AsyncSession] = state.sessionmaker
    session = sessionmaker()
    try:
        yield session
    except BaseException as exc:
        if getattr(exc, "commit_before_answer", False):
            await session.commit()
        else:
            await session.rollback()
        raise
    else:
        if not _untouched(session):
            await session.commit()
    finally:
        if not _untouched(session):  # a commit or rollback that failed: the connection goes back
            await session.close()


def _untouched(session: AsyncSession) -> bool:
    """Whether ``session`` never began a transaction nor holds objects a commit would write: it has
    nothing to commit or release. (A request that only used DirectStatements, or none of its session,
    then skips a commit and a close that would cost it measurably: docs/PERFORMANCE.md.)"""
    return not (session.in_transaction() or session.new or session.dirty or session.deleted)


async def read_without_transaction(session: AsyncSession) -> None:
    """Run ``session``'s statements in autocommit on PostgreSQL until its next ``commit``: reads
    that need no BEGIN and COMMIT (two round trips). It must not have begun a transaction yet;
    after the commit its connection goes back to the pool, and the next statement begins a
    transaction as usual. (SQLite's BEGIN costs no round trip: left as it is.)"""
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def wake_after_commit(
    sessionmaker: async_sessionmaker[AsyncSession], flag: str, wake: Callable[[], None]
) -> Callable[[], None]:
    """Call ``wake`` after each commit of a session whose ``info`` holds ``flag`` (set in the
    transaction that wrote something for a relay to send) and drop the flag; returns what stops it."""
    session_class = sessionmaker.kw.get("sync_session_class", Session)

    def after_commit(session: Session) -> None:
        if session.info.pop(flag, False):
            wake()

    event.listen(session_class, "after_commit", after_commit)

    def stop() -> None:
        with contextlib.suppress(InvalidRequestError):  # stopped already
            event.remove(session_class, "after_commit", after_commit)

    return stop


async def insert_or_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> bool:
    """INSERT the row unless its key exists (ON CONFLICT DO NOTHING); True when inserted."""
    insert: Callable[[Table], Any] = postgresql.insert
    if session.get_bind().dialect.name != "postgresql":
        # Imported on SQLite only: a process on PostgreSQL does without its 0.6 MB.
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return (await session.execute(statement)).first() is not None


Statement = Select[Any] | TextualSelect


class DirectStatements:
    """The hottest statements, outside the request's ORM session: a read of committed rows, or one
    statement that writes and is atomic on its own (an ``INSERT ... RETURNING`` with its CTEs).

    On PostgreSQL a statement is compiled once and runs on the psycopg connection of one of the
    engine's pooled connections, in autocommit: no session, unit of work, identity map or greenlet
    per await. A primary-key read costs about a third of the CPU it costs through an
    ``AsyncSession`` (docs/PERFORMANCE.md, "Services vs a minimal app"). It is the same pool, so the
    same limits, the same dropped-connection check and the same 503s when the database is down.
    On SQLite (the embedded mode) it runs through SQLAlchemy Core.

    For SELECTs of columns (``select(table.c.a, ...)``) or ``text(...).columns(...)``, with named
    parameters (``bindparam("id")``, ``:rows``) and no expanding ``IN`` lists; each column's type
    processes the values as SQLAlchemy would. Each statement commits as it runs: not for work of
    several statements that must stand or fall together, nor for reads that must see the request's
    own uncommitted writes. Those use the session."""

    def __init__(self, engine: AsyncEngine, tracer: Tracer | None = None) -> None:
        self.engine = engine
        self.on_postgresql = engine.dialect.name == "postgresql"
        self.tracer = tracer  # a span per statement, as the engine's instrumentation makes, when tracing is on
        self._compiled: dict[Statement, _CompiledRead] = {}

    async def first(self, statement: Statement, **params: Any) -> dict[str, Any] | None:
        """The first row as a dict of the selected columns' keys, or None."""
        rows = await self.all(statement, **params)
        return rows[0] if rows else None

    async def all(self, statement: Statement, **params: Any) -> list[dict[str, Any]]:
        """Every row, each a dict of the selected columns' keys."""
        if not self.on_postgresql:
            async with self.engine.begin() as connection:  # committed: the statement may write
                return [dict(row) for row in (await connection.execute(statement, params)).mappings()]
        read = self._compiled.get(statement) or self._compile(statement)
        if self.tracer is None:
            rows, description = await self._run(read, params)
        else:
            with self.tracer.start_as_current_span(
                read.span_name, kind=SpanKind.CLIENT, attributes=read.span_attributes
            ):
                rows, description = await self._run(read, params)
        convert = read.converters(self.engine.dialect, description)
        return [
            {key: value if to is None else to(value) for key, to, value in zip(read.keys, convert, row, strict=True)}
            for row in rows
        ]

    async def _run(self, read: "_CompiledRead", params: dict[str, Any]) -> tuple[list[Any], Sequence[Any]]:
        try:
            async with _autocommit_driver_connection(self.engine) as connection:
                cursor = await connection.execute(read.sql, read.parameters(params))
                return await cursor.fetchall(), cursor.description or []
        except psycopg.Error as exc:  # as SQLAlchemy raises it: the kernel's handlers answer 503 or 500
            broken = isinstance(exc, psycopg.OperationalError)
            raise DBAPIError.instance(
                read.sql, None, exc, psycopg.Error, hide_parameters=True, connection_invalidated=broken
            ) from exc

    def _compile(self, statement: Statement) -> "_CompiledRead":
        dialect = self.engine.dialect
        compiled = statement.compile(dialect=dialect)
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("DirectStatements takes no expanding IN parameters")
        sql, database = str(compiled), self.engine.url.database or ""
        read = _CompiledRead(
            sql=sql,
            defaults={name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required},
            binders={
                name: processor
                for name, bind in compiled.binds.items()
                if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
            },
            keys=[str(column.key) for column in statement.selected_columns],
            types=[column.type.dialect_impl(dialect) for column in statement.selected_columns],
            span_name=f"{sql.split(None, 1)[0].upper()} {database}",
            # The SQL with its placeholders, never the values: they may be personal data.
            span_attributes={"db.system": "postgresql", "db.name": database, "db.statement": sql},
        )
        self._compiled[statement] = read
        return read


@dataclass(slots=True)
class _CompiledRead:
    sql: str
    defaults: dict[str, Any]
    binders: dict[str, Callable[[Any], Any]]
    keys: list[str]
    types: list[TypeEngine[Any]]
    span_name: str
    span_attributes: dict[str, str]
    results: list[Callable[[Any], Any] | None] | None = None

    def parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        values = {**self.defaults, **given}
        for name, bind in self.binders.items():
            values[name] = bind(values[name])
        return values

    def converters(self, dialect: Dialect, description: Sequence[Any]) -> list[Callable[[Any], Any] | None]:
        """Each column's result processor, as SQLAlchemy would apply it: some depend on the type the
        server sent (a NUMERIC or a FLOAT), so they are made at the first answer."""
        if self.results is None:
            codes = [column.type_code for column in description]
            self.results = [kind.result_processor(dialect, code) for kind, code in zip(self.types, codes, strict=True)]
        return self.results


@contextlib.asynccontextmanager
async def _autocommit_driver_connection(engine: AsyncEngine) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One of ``engine``'s pooled connections as psycopg's own, in autocommit while it is lent (a
    client-side switch on an idle connection: no round trip), then back to the pool. One that broke
    meanwhile is invalidated, so the pool opens another."""
    pooled: PoolProxiedConnection = await engine.raw_connection()
    connection: psycopg.AsyncConnection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        await connection.set_autocommit(True)
        yield connection
        await connection.set_autocommit(False)
    except BaseException as exc:
        if connection.broken or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await greenlet_spawn(pooled.invalidate, exc)  # broken, or a statement cut short
        else:
            await connection.set_autocommit(False)
        raise
    finally:
        await greenlet_spawn(pooled.close)


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether a database error says the database is down, hung or unreachable (a 503 to retry)
    rather than that a statement was wrong (a bug)."""
    if isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError):
        return bool(exc.connection_invalidated)
    return True


def database_unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A database that is down or too slow is a 503 the client may retry, never a 500."""
    if not is_database_unavailable(exc):
        return internal_error_handler(request, exc)
    logger.warning("database unavailable", extra={"error": type(exc).__name__})
    return problem_response(
        request,
        503,
        "The database is unavailable; try again shortly.",
        code="database-unavailable",
        headers={"Retry-After": "2"},
    )


DB_EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    DBAPIError: database_unavailable_handler,
    PoolTimeoutError: database_unavailable_handler,
}
