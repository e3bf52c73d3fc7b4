from typing import ClassVar

from shared.settings import ServiceSettings, SettingsError


class UserSettings(ServiceSettings, kw_only=True, frozen=True):
    env_prefix: ClassVar[str] = "USERS"

    service_name: str = "users"
    port: int = 8002
    # `python -m user_service purge` without --older-than removes profiles deleted this long ago.
    purge_after_days: int = 30

    def validate(self) -> None:
        super().validate()
        if self.purge_after_days < 0:
            raise SettingsError("PURGE_AFTER_DAYS: must not be negative")
