"""The user service's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

from pathlib import Path

import pytest

from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, assert_round_trip, fresh_settings
from user_service.config import UserSettings
from user_service.models import Base


@pytest.mark.parametrize("database", DATABASES)
def test_upgrade_downgrade_upgrade_leaves_no_drift(database: str, databases: DatabaseFactory, tmp_path: Path) -> None:
    settings = fresh_settings(UserSettings, database, databases, tmp_path)

    assert_round_trip(
        settings, "user_service", Base.metadata, {"profiles", "outbox", "processed_events"}, "alembic_version_users"
    )
