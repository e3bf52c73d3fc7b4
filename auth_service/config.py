import os
from typing import ClassVar

from shared.settings import ServiceSettings, SettingsError

# OWASP Password Storage Cheat Sheet minimum for argon2id.
MIN_ARGON2_MEMORY_KIB = 19456
MIN_ARGON2_TIME_COST = 2
MAX_PASSWORD_LENGTH = 128


class AuthSettings(ServiceSettings, kw_only=True, frozen=True):
    env_prefix: ClassVar[str] = "AUTH"

    service_name: str = "auth"
    port: int = 8001
    access_token_ttl: int = 900
    refresh_idle_ttl: int = 14 * 86400
    refresh_absolute_ttl: int = 30 * 86400
    refresh_reuse_grace: float = 10.0
    password_min_length: int = 8
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    hash_concurrency: int = max(1, len(os.sched_getaffinity(0)))
    login_failures_before_lockout: int = 5
    lockout_base_seconds: int = 30
    lockout_max_seconds: int = 900
    ip_attempts_per_minute: int = 10
    jwt_private_key_file: str = ""

    def validate(self) -> None:
        super().validate()
        if self.argon2_memory_kib < MIN_ARGON2_MEMORY_KIB:
            raise SettingsError(f"ARGON2_MEMORY_KIB: must be at least {MIN_ARGON2_MEMORY_KIB}")
        if self.argon2_time_cost < MIN_ARGON2_TIME_COST:
            raise SettingsError(f"ARGON2_TIME_COST: must be at least {MIN_ARGON2_TIME_COST}")
        if self.argon2_parallelism < 1:
            raise SettingsError("ARGON2_PARALLELISM: must be at least 1")
        if not 8 <= self.password_min_length <= MAX_PASSWORD_LENGTH:
            raise SettingsError(f"PASSWORD_MIN_LENGTH: must be between 8 and {MAX_PASSWORD_LENGTH}")
        if self.access_token_ttl <= 0 or self.access_token_ttl > 86400:
            raise SettingsError("ACCESS_TOKEN_TTL: must be between 1 and 86400 seconds")
        if self.refresh_idle_ttl > self.refresh_absolute_ttl:
            raise SettingsError("REFRESH_IDLE_TTL: must not exceed REFRESH_ABSOLUTE_TTL")
        if not 0 <= self.refresh_reuse_grace <= 60:
            raise SettingsError("REFRESH_REUSE_GRACE: must be between 0 and 60 seconds")
