"""Retention: events and metrics older than RETENTION_DAYS go, in batches; the rollups stay longer;
``python -m analytics_service purge`` and the periodic task both do it."""

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from analytics_service.app import create_app
from analytics_service.workers import purge
from shared.db import create_engine, create_sessionmaker
from tests.analytics_service.conftest import SettingsFactory, count_rows
from tests.conftest import app_client

REPO = Path(__file__).resolve().parents[2]


def statement_log(engine: AsyncEngine) -> list[str]:
    """ "DELETE <table>" for each delete statement and "COMMIT" for each commit, in order."""
    log: list[str] = []

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM"):
            log.append(f"DELETE {statement.split()[2]}")

    event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    event.listen(engine.sync_engine, "commit", lambda conn: log.append("COMMIT"))
    return log


def seed(database_url: str, now: datetime) -> None:
    """7 events and 2 metrics past 90 days, 3 events and 1 metric within; rollups of both ages."""
    with psycopg.connect(database_url) as conn:
        for days, count in ((100, 7), (10, 3)):
            conn.execute(
                "INSERT INTO events (user_id, event_id, event_type, properties, occurred_at, received_at)"
                " SELECT 'u', gen_random_uuid(), 'x', '{}', %(at)s, %(at)s FROM generate_series(1, %(n)s)",
                {"at": now - timedelta(days=days), "n": count},
            )
        for days in (95, 91, 1):
            conn.execute(
                "INSERT INTO metrics (id, name, value, type, labels, timestamp)"
                " VALUES (gen_random_uuid(), 'm', 1, 'gauge', '{}', %s)",
                (now - timedelta(days=days),),
            )
        for days in (500, 100):
            conn.execute(
                "INSERT INTO usage_daily VALUES ('u', %s, 1, 0, 0, 0, 0, 0)", ((now - timedelta(days=days)).date(),)
            )


async def test_purge_deletes_raw_rows_past_retention_in_batches_and_keeps_recent_rollups(
    make_settings: SettingsFactory, clean_analytics_database: str
) -> None:
    now = datetime.now(UTC)
    seed(clean_analytics_database, now)
    settings = make_settings(purge_batch_size=3)
    engine = create_engine(settings)
    log = statement_log(engine)
    try:
        deleted = await purge(create_sessionmaker(engine), settings, now)
    finally:
        await engine.dispose()

    assert deleted["events"] == 7
    # Seven old events with batches of three: three deletes (3, 3, 1), each committed on its own
    # (short locks), rather than one statement holding every row.
    events_log = [entry for entry in log if entry in ("DELETE events", "COMMIT")]
    assert "".join(entry[0] for entry in events_log).count("DC") == 3
    assert events_log.count("DELETE events") == 3
    assert deleted["metrics"] == 2
    assert deleted["usage_daily"] == 1  # 500 days old; the 100-day-old rollup stays (400 days)
    assert count_rows(clean_analytics_database, "events") == 3
    assert count_rows(clean_analytics_database, "metrics") == 1
    assert count_rows(clean_analytics_database, "usage_daily") == 1


def test_the_purge_command(clean_analytics_database: str, tmp_path: Path) -> None:
    seed(clean_analytics_database, datetime.now(UTC))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ANALYTICS_DATABASE_URL": clean_analytics_database,
        "ANALYTICS_RETENTION_DAYS": "30",
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "analytics_service", "purge"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "events=7" in result.stdout.decode()
    assert count_rows(clean_analytics_database, "events") == 3

    bad = subprocess.run(
        [sys.executable, "-m", "analytics_service", "purge"],
        cwd=REPO,
        env={**env, "ANALYTICS_RETENTION_DAYS": "0"},
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert b"ANALYTICS_RETENTION_DAYS" in bad.stderr


async def test_the_service_purges_periodically(make_settings: SettingsFactory, clean_analytics_database: str) -> None:
    seed(clean_analytics_database, datetime.now(UTC))
    app = create_app(make_settings(purge_interval_seconds=0.2))
    async with app_client(app):
        deadline = time.monotonic() + 15
        while count_rows(clean_analytics_database, "events") != 3:
            assert time.monotonic() < deadline, "the periodic purge never ran"
            await asyncio.sleep(0.1)
