"""The Airtable gateway's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

from pathlib import Path

import pytest

from airtable_gateway.config import AirtableSettings
from airtable_gateway.models import Base
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, assert_round_trip, fresh_settings


@pytest.mark.parametrize("database", DATABASES)
def test_upgrade_downgrade_upgrade_leaves_no_drift(database: str, databases: DatabaseFactory, tmp_path: Path) -> None:
    settings = fresh_settings(AirtableSettings, database, databases, tmp_path)

    assert_round_trip(
        settings,
        "airtable_gateway",
        Base.metadata,
        {"user_tokens", "base_grants", "outbox", "processed_events"},
        "alembic_version_airtable",
    )
