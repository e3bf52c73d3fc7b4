"""Every service's Alembic history (the services of shared/registry.py): upgrade, downgrade to
nothing, upgrade again, on PostgreSQL and SQLite, with no drift from the service's models.

What a revision does to existing rows is tested next to the service, in
``tests/<service>/test_migrations.py``.
"""

import importlib
from pathlib import Path

import pytest

from shared.registry import SERVICES, ServiceEntry
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, assert_round_trip, fresh_settings

# The tables each service's migrations make, and the Alembic version table its env.py names.
SCHEMAS: dict[str, tuple[set[str], str]] = {
    "auth_service": (
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
            "organizations",
            "memberships",
            "invitations",
        },
        "alembic_version_auth",
    ),
    "user_service": ({"profiles", "outbox", "processed_events", "memberships"}, "alembic_version_users"),
    "airtable_gateway": ({"user_tokens", "base_grants", "outbox", "processed_events"}, "alembic_version_airtable"),
    "analytics_service": (
        {
            "events",
            "metrics",
            "usage_daily",
            "cost_daily",
            "endpoint_hourly",
            "event_hourly",
            "usage_applied",
            "usage_scoped_daily",
            "audit_log",
            "processed_events",
        },
        "alembic_version_analytics",
    ),
}


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("service", SERVICES, ids=lambda entry: entry.package)
def test_upgrade_downgrade_upgrade_leaves_no_drift(
    service: ServiceEntry, database: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    tables, version_table = SCHEMAS[service.package]
    settings = fresh_settings(service.settings(), database, databases, tmp_path)
    models = importlib.import_module(f"{service.package}.models")

    assert_round_trip(settings, service.package, models.Base.metadata, tables, version_table)
