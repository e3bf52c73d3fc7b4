from typing import ClassVar

from shared.settings import ServiceSettings, SettingsError

MAX_BATCH_ITEMS = 1000


class AnalyticsSettings(ServiceSettings, kw_only=True, frozen=True):
    env_prefix: ClassVar[str] = "ANALYTICS"

    service_name: str = "analytics"
    port: int = 8005
    # Raw events and metrics older than this are purged (ANALYTICS_RETENTION_DAYS).
    retention_days: int = 90
    # The per-day and per-hour rollups (usage, costs, dashboard) are kept longer.
    rollup_retention_days: int = 400
    # Audit log entries are kept this long (ANALYTICS_AUDIT_RETENTION_DAYS or AUDIT_RETENTION_DAYS).
    audit_retention_days: int = 365
    purge_interval_seconds: float = 3600.0
    purge_batch_size: int = 10_000
    # The usage pipeline: records the gateway publishes (Redis stream or in-memory channel).
    usage_consumer_enabled: bool = True
    usage_read_count: int = 500
    usage_reclaim_seconds: float = 30.0

    def validate(self) -> None:
        super().validate()
        if self.retention_days < 1:
            raise SettingsError("RETENTION_DAYS: must be at least 1")
        if self.rollup_retention_days < self.retention_days:
            raise SettingsError("ROLLUP_RETENTION_DAYS: must not be shorter than RETENTION_DAYS")
        if self.audit_retention_days < 1:
            raise SettingsError("AUDIT_RETENTION_DAYS: must be at least 1")
        if self.purge_interval_seconds <= 0 or self.purge_batch_size < 1:
            raise SettingsError("PURGE_INTERVAL_SECONDS: must be positive")
        if not 1 <= self.usage_read_count <= 10_000:
            raise SettingsError("USAGE_READ_COUNT: must be between 1 and 10000")
