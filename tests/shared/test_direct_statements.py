"""DirectStatements: the hottest reads outside the ORM session answer what the session would, on both
backends, and leave the pool's connections as they found them."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Date, Integer, Numeric, String, Table, bindparam, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import JSON, Uuid

from shared.db import DirectStatements, UTCDateTime, create_engine, create_sessionmaker, service_metadata
from shared.settings import ServiceSettings
from tests.conftest import DatabaseFactory


class Base(DeclarativeBase):
    metadata = service_metadata()


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    preferences: Mapped[dict[str, Any]] = mapped_column(JSON)
    signed_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    day: Mapped[date] = mapped_column(Date)
    visits: Mapped[int] = mapped_column(Integer)
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 6))  # its processor depends on the server's type


ACCOUNTS = cast(Table, Account.__table__)
BY_ID = select(*ACCOUNTS.c).where(ACCOUNTS.c.id == bindparam("id"))
SINCE = select(ACCOUNTS.c.email, ACCOUNTS.c.day).where(ACCOUNTS.c.day >= bindparam("since")).order_by(ACCOUNTS.c.day)
IN_LIST = select(ACCOUNTS.c.email).where(ACCOUNTS.c.id.in_(bindparam("ids", expanding=True)))


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest, databases: DatabaseFactory, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    if request.param == "postgresql":
        settings = ServiceSettings(database_url=databases.create("pyairtable_direct_reads"), db_pool_size=1)
    else:
        settings = ServiceSettings(data_dir=str(tmp_path))
    engine = create_engine(settings)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


def account(email: str, day: date, signed_in_at: datetime | None = None) -> Account:
    return Account(
        id=uuid.uuid4(),
        email=email,
        preferences={"theme": "dark", "tags": ["ä", 1]},
        signed_in_at=signed_in_at,
        day=day,
        visits=3,
        balance=Decimal("12.345678"),
    )


async def test_a_row_reads_as_the_orm_reads_it(engine: AsyncEngine) -> None:
    signed_in = datetime(2026, 12, 7, 3, 4, 5, 600000, tzinfo=UTC)
    async with create_sessionmaker(engine)() as session:
        session.add(stored := account("ada@example.com", date(2026, 12, 1), signed_in))
        await session.commit()
        orm = await session.get(Account, stored.id, populate_existing=True)
    assert orm is not None

    row = await DirectStatements(engine).first(BY_ID, id=stored.id)

    assert row == {column.key: getattr(orm, column.key) for column in ACCOUNTS.c}
    assert row is not None and row["signed_in_at"].utcoffset() == timedelta(0)  # aware, in UTC
    assert row["balance"] == Decimal("12.345678")
    assert await DirectStatements(engine).first(BY_ID, id=uuid.uuid4()) is None


async def test_rows_come_in_the_statements_order_with_its_parameters(engine: AsyncEngine) -> None:
    async with create_sessionmaker(engine)() as session:
        for email, day in [("c@example.com", 3), ("a@example.com", 1), ("b@example.com", 2)]:
            session.add(account(email, date(2026, 12, day)))
        await session.commit()

    rows = await DirectStatements(engine).all(SINCE, since=date(2026, 12, 2))

    assert rows == [
        {"email": "b@example.com", "day": date(2026, 12, 2)},
        {"email": "c@example.com", "day": date(2026, 12, 3)},
    ]


async def test_a_read_leaves_its_connection_to_transactions_again(engine: AsyncEngine) -> None:
    """The pool holds one connection: the read's autocommit must not outlive the read, or the
    session's rolled-back INSERT below would stand."""
    direct = DirectStatements(engine)
    await direct.first(BY_ID, id=uuid.uuid4())
    async with create_sessionmaker(engine)() as session:
        session.add(account("rolled-back@example.com", date(2026, 12, 1)))
        await session.flush()
        await session.rollback()

    assert await direct.all(SINCE, since=date(2000, 1, 1)) == []


async def test_a_read_cut_by_the_statement_timeout_is_an_error_and_the_next_read_is_served(
    databases: DatabaseFactory,
) -> None:
    settings = ServiceSettings(
        database_url=databases.create("pyairtable_direct_timeout"), db_pool_size=1, db_statement_timeout_ms=100
    )
    engine = create_engine(settings)
    direct = DirectStatements(engine)
    sleep = select(func.pg_sleep(bindparam("seconds")).label("slept"))
    try:
        with pytest.raises(OperationalError, match="statement timeout"):  # the kernel's 503, as for the ORM
            await asyncio.wait_for(direct.first(sleep, seconds=5), 10)
        assert await direct.first(sleep, seconds=0) is not None  # served, on the same pool
    finally:
        await engine.dispose()


async def test_expanding_in_lists_are_refused_on_postgresql(databases: DatabaseFactory) -> None:
    engine = create_engine(ServiceSettings(database_url=databases.create("pyairtable_direct_in")))
    try:
        with pytest.raises(ValueError, match="expanding"):
            await DirectStatements(engine).all(IN_LIST, ids=[uuid.uuid4()])
    finally:
        await engine.dispose()


async def test_a_writing_statement_commits_on_its_own_and_returns_its_rows(engine: AsyncEngine) -> None:
    insert = text(
        "INSERT INTO accounts (id, email, preferences, day, visits, balance)"
        " VALUES (:id, :email, '{}', :day, 1, 0) ON CONFLICT (id) DO NOTHING RETURNING email"
    ).columns(email=String)
    direct, key = DirectStatements(engine), uuid.uuid4().hex  # SQLite keeps a UUID as 32 hex digits

    first = await direct.all(insert, id=key, email="ada@example.com", day=date(2026, 12, 7))
    again = await direct.all(insert, id=key, email="ada@example.com", day=date(2026, 12, 7))

    assert (first, again) == ([{"email": "ada@example.com"}], [])
    async with create_sessionmaker(engine)() as session:  # another connection sees it: committed
        assert await session.scalar(select(func.count()).select_from(Account)) == 1
