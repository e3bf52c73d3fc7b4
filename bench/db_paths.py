"""One primary-key read by every path a service could take to PostgreSQL, side by side: CPU per read.

    .venv/bin/python -m bench.db_paths [--postgres URL] [--reads 3000] [--rounds 3]

The read is a 20-column profile (the user service's table) by its id, in autocommit, from one
process: the ORM session the services used before, Core on the session and on the engine, the
kernel's DirectStatements (a pooled connection's psycopg connection), psycopg_pool, and one
psycopg connection held open (the floor). CPU is the process's (``time.process_time``), so other
load on the machine does not count; PostgreSQL runs on its own. A temporary database is created and
dropped."""

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Table, bindparam, make_url, select
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import DirectStatements, create_sessionmaker
from user_service.models import Base, Profile

PROFILES = cast(Table, Profile.__table__)
RAW_SQL = "SELECT * FROM profiles WHERE id = %s"


async def run(server_url: str, reads: int, rounds: int) -> None:
    name = f"bench_db_paths_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(server_url).set(database=name)
    conninfo = url.render_as_string(hide_password=False)
    engine = create_async_engine(url.set(drivername="postgresql+psycopg"), pool_size=5)
    pool = AsyncConnectionPool(conninfo, min_size=1, max_size=5, kwargs={"autocommit": True}, open=False)
    held = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            user_id = uuid.uuid4()
            await connection.execute(PROFILES.insert().values(id=user_id, email="ada@example.com", preferences={}))
        await pool.open()
        paths = _paths(engine, pool, held, user_id)
        print(f"CPU ms per read ({reads} reads per pass, {rounds} passes)")
        for _ in range(rounds):
            for label, read in paths.items():
                for _ in range(200):  # warm: connections opened, statements prepared
                    await read()
                started = time.process_time()
                for _ in range(reads):
                    await read()
                print(f"  {label:58s} {(time.process_time() - started) / reads * 1000:.3f}")
    finally:
        await held.close()
        await pool.close()
        await engine.dispose()
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _paths(
    engine: Any, pool: AsyncConnectionPool, held: Any, user_id: uuid.UUID
) -> dict[str, Callable[[], Awaitable[Any]]]:
    sessionmaker = create_sessionmaker(engine)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    by_id = select(*PROFILES.c).where(PROFILES.c.id == bindparam("id"))
    direct = DirectStatements(engine)

    async def orm_session() -> Any:
        async with sessionmaker() as session:
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            profile = await session.scalar(select(Profile).where(Profile.id == user_id))
            await session.commit()
            return profile

    async def core_on_session() -> Any:
        async with sessionmaker() as session:
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            row = (await session.execute(by_id, {"id": user_id})).first()
            await session.commit()
            return row

    async def core_on_engine() -> Any:
        async with autocommit.connect() as connection:
            return (await connection.execute(by_id, {"id": user_id})).first()

    async def direct_statements() -> Any:
        return await direct.first(by_id, id=user_id)

    async def psycopg_pool() -> Any:
        async with pool.connection() as connection:
            return await (await connection.execute(RAW_SQL, (user_id,))).fetchone()

    async def one_connection() -> Any:
        return await (await held.execute(RAW_SQL, (user_id,))).fetchone()

    return {
        "ORM AsyncSession, select(Profile) (the services until 12-07)": orm_session,
        "the same session, Core select": core_on_session,
        "AsyncEngine.connect(), Core select": core_on_engine,
        "DirectStatements (a pooled connection's psycopg)": direct_statements,
        "psycopg_pool.AsyncConnectionPool": psycopg_pool,
        "one psycopg connection held open (the floor)": one_connection,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.postgres, args.reads, args.rounds))


if __name__ == "__main__":
    main()
