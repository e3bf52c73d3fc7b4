"""The auth service's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

from pathlib import Path

import pytest

from auth_service.config import AuthSettings
from auth_service.models import Base
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, assert_round_trip, fresh_settings


@pytest.mark.parametrize("database", DATABASES)
def test_upgrade_downgrade_upgrade_leaves_no_drift(database: str, databases: DatabaseFactory, tmp_path: Path) -> None:
    settings = fresh_settings(AuthSettings, database, databases, tmp_path)

    assert_round_trip(
        settings,
        "auth_service",
        Base.metadata,
        {
            "users",
            "sessions",
            "refresh_tokens",
            "one_time_tokens",
            "outbox",
            "mail_outbox",
            "processed_events",
            "two_factor",
            "recovery_codes",
            "api_keys",
        },
        "alembic_version_auth",
    )
