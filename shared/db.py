"""Async SQLAlchemy for PostgreSQL (psycopg 3) and SQLite (aiosqlite); one transaction per request."""

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from litestar import Request, Response
from litestar.datastructures import State
from sqlalchemy import DateTime, Table, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from shared.errors import Problem, internal_error_handler, problem_response
from shared.settings import ServiceSettings

logger = logging.getLogger("shared.db")


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
    return create_async_engine(
        url,
        hide_parameters=True,  # an error's SQL parameters (hashes, emails) never reach a log line
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,  # a connection PostgreSQL dropped (a restart) is replaced, not used
        pool_timeout=settings.db_connect_timeout_seconds,
        pool_recycle=1800,
        async_creator=_bounded_connect(settings),
    )


def _bounded_connect(settings: ServiceSettings) -> Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]:
    """Connections made within DB_CONNECT_TIMEOUT_SECONDS, with the statement timeout set.

    libpq's ``connect_timeout`` has a floor of 2 s and a hung server (postmaster stopped) would hold
    the request that long or longer, so the connect is bounded here; a connect that times out is an
    OperationalError like a refused one, which the kernel answers with a 503."""
    conninfo = make_url(settings.sqlalchemy_url()).set(drivername="postgresql").render_as_string(hide_password=False)
    timeout = settings.db_connect_timeout_seconds

    async def connect() -> psycopg.AsyncConnection[Any]:
        try:
            async with asyncio.timeout(timeout):
                return await psycopg.AsyncConnection.connect(
                    conninfo,
                    connect_timeout=max(2, math.ceil(timeout)),
                    options=f"-c statement_timeout={settings.db_statement_timeout_ms}",
                )
        except TimeoutError:
            raise psycopg.OperationalError(f"connection not made within {timeout} s") from None

    return connect


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
    sessions are revoked in the database though Redis could not record it)."""
    sessionmaker: async_sessionmaker[AsyncSession] = state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException as exc:
            if getattr(exc, "commit_before_answer", False):
                await session.commit()
            else:
                await session.rollback()
            raise
        await session.commit()


async def insert_or_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> bool:
    """INSERT the row unless its key exists (ON CONFLICT DO NOTHING); True when inserted."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return (await session.execute(statement)).first() is not None


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def database_unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A database that is down or too slow is a 503 the client may retry, never a 500."""
    if isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError) and not exc.connection_invalidated:
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
