import os
import re
from typing import ClassVar
from urllib.parse import urlsplit

from shared.settings import ServiceSettings, SettingsError, check_secret

# OWASP Password Storage Cheat Sheet minimum for argon2id.
MIN_ARGON2_MEMORY_KIB = 19456
MIN_ARGON2_TIME_COST = 2
MAX_PASSWORD_LENGTH = 128
# JWT_EXPIRES_IN: "24h", "7d", "30m" or seconds, as the older platform service read it.
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_LEGACY_TOKEN_TTL = 30 * 86400


def parse_duration(text: str) -> int:
    """Seconds in ``24h``, ``7d``, ``30m``, ``90s`` or ``3600``; ValueError otherwise."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(text)
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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
    # The lifetime of the access tokens the older platform's routes issue (empty: ACCESS_TOKEN_TTL).
    jwt_expires_in: str = ""
    # Mail: SMTP_URL empty logs each message instead (development); links point into SITE_URL.
    smtp_url: str = ""
    smtp_ca_file: str = ""
    mail_from: str = "PyAirtable <no-reply@localhost>"
    site_url: str = "http://localhost:8080"
    require_verified_email: bool = False
    password_reset_ttl: int = 1800
    email_verification_ttl: int = 86400
    # Mails one address may be sent per hour by forgot-password and resend (each counted apart).
    mail_per_address_per_hour: int = 5
    # Two-factor: the TOTP secrets are stored encrypted under this key (any secret of at least 32
    # bytes; development generates one into DATA_DIR/totp_key; production without it offers no
    # enrolment). The issuer names the account in authenticator apps.
    totp_encryption_key: str = ""
    totp_issuer: str = "PyAirtable"
    # How long the challenge of a password sign-in waits for its second factor.
    mfa_challenge_ttl: int = 300
    # API keys: the HMAC key their secrets are hashed with (empty: one kept in DATA_DIR outside
    # production, a fixed label in production), and the lifetime of the token the gateway gets for a key.
    api_key_pepper: str = ""
    api_key_token_ttl: int = 120
    # The deployment's legacy key (the gateway's API_KEY): exchanged for a token of the deployment.
    api_key: str = ""
    require_api_key: bool = True
    # Who may register: open (anyone), invite (with an invitation only) or domains (addresses of
    # SIGNUP_DOMAINS, comma-separated, or with an invitation). Platform admins always create accounts.
    signup_mode: str = "open"
    signup_domains: str = ""

    @property
    def signup_domain_set(self) -> frozenset[str]:
        return frozenset(d.strip().lower().lstrip("@") for d in self.signup_domains.split(",") if d.strip())

    @property
    def legacy_token_ttl(self) -> int:
        return parse_duration(self.jwt_expires_in) if self.jwt_expires_in else self.access_token_ttl

    @property
    def longest_access_token_ttl(self) -> int:
        return max(self.access_token_ttl, self.legacy_token_ttl)

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
        self._validate_lifecycle()

    def _validate_lifecycle(self) -> None:
        try:
            legacy_ttl = self.legacy_token_ttl
        except ValueError:
            raise SettingsError("JWT_EXPIRES_IN: must be like 24h, 7d, 30m or a number of seconds") from None
        if not 0 < legacy_ttl <= MAX_LEGACY_TOKEN_TTL:
            raise SettingsError("JWT_EXPIRES_IN: must be between 1 second and 30 days")
        if self.smtp_url and urlsplit(self.smtp_url).scheme not in ("smtp", "smtps"):
            raise SettingsError("SMTP_URL: must be smtp://[user:password@]host[:port] or smtps://...")
        if not self.site_url.startswith(("http://", "https://")):
            raise SettingsError("SITE_URL: must be an http:// or https:// URL")
        if not 60 <= self.password_reset_ttl <= 86400 or not 60 <= self.email_verification_ttl <= 7 * 86400:
            raise SettingsError("PASSWORD_RESET_TTL: 1 min to 1 day; EMAIL_VERIFICATION_TTL: 1 min to 7 days")
        if self.mail_per_address_per_hour < 1:
            raise SettingsError("MAIL_PER_ADDRESS_PER_HOUR: must be at least 1")
        if self.totp_encryption_key:
            check_secret("TOTP_ENCRYPTION_KEY", self.totp_encryption_key, production=self.is_production)
        if not 30 <= self.mfa_challenge_ttl <= 1800:
            raise SettingsError("MFA_CHALLENGE_TTL: must be between 30 and 1800 seconds")
        if not 1 <= len(self.totp_issuer) <= 64 or ":" in self.totp_issuer:
            raise SettingsError("TOTP_ISSUER: 1 to 64 characters, no ':'")
        self._validate_api_keys()
        if self.signup_mode not in ("open", "invite", "domains"):
            raise SettingsError("SIGNUP_MODE: must be open, invite or domains")
        if self.signup_mode == "domains" and not self.signup_domain_set:
            raise SettingsError("SIGNUP_DOMAINS: name at least one domain when SIGNUP_MODE is domains")

    def _validate_api_keys(self) -> None:
        if not 10 <= self.api_key_token_ttl <= 900:
            raise SettingsError("API_KEY_TOKEN_TTL: must be between 10 and 900 seconds")
        if self.api_key_pepper:
            check_secret("API_KEY_PEPPER", self.api_key_pepper, production=self.is_production)
        if self.api_key:
            check_secret("API_KEY", self.api_key, production=self.is_production, min_length=16)
