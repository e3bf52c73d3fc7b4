"""The analytics service's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

from pathlib import Path

import pytest

from analytics_service.config import AnalyticsSettings
from analytics_service.models import Base
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, assert_round_trip, fresh_settings

TABLES = {"events", "metrics", "usage_daily", "cost_daily", "endpoint_hourly", "event_hourly", "usage_applied"}


@pytest.mark.parametrize("database", DATABASES)
def test_upgrade_downgrade_upgrade_leaves_no_drift(database: str, databases: DatabaseFactory, tmp_path: Path) -> None:
    settings = fresh_settings(AnalyticsSettings, database, databases, tmp_path)

    assert_round_trip(settings, "analytics_service", Base.metadata, TABLES, "alembic_version_analytics")
