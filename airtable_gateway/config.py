from typing import ClassVar, Literal

from shared.settings import ServiceSettings, SettingsError, check_secret

AIRTABLE_API_URL = "https://api.airtable.com"
# A revoked grant must take effect within seconds, whatever a deployment sets.
MAX_GRANT_CACHE_SECONDS = 2.0


class AirtableSettings(ServiceSettings, kw_only=True, frozen=True):
    """The Airtable gateway's settings.

    The prefix is ``AIRTABLE_GATEWAY`` so that the fields named ``airtable_*`` read the plain
    names users know (``AIRTABLE_TOKEN``, ``AIRTABLE_API_URL``, ...), while
    ``AIRTABLE_GATEWAY_DATABASE_URL`` and ``AIRTABLE_GATEWAY_PORT`` stay this service's own.
    """

    env_prefix: ClassVar[str] = "AIRTABLE_GATEWAY"

    service_name: str = "airtable"
    port: int = 8003
    # An uncached read makes several Redis calls (revocations, cache, limits): 2 failures in a row
    # are enough to stop calling a hung Redis, so it costs one request ~100 ms, not ~250.
    redis_breaker_failures: int = 2
    # The platform's Airtable token; a user's own token (PUT /token) wins for that user's requests.
    airtable_token: str = ""
    airtable_api_url: str = AIRTABLE_API_URL
    # Serve Airtable from the built-in emulator in this process (the embedded run mode without a token).
    airtable_emulator: bool = False
    # Any secret of at least 32 bytes; development generates one into DATA_DIR/airtable_token_key.
    airtable_token_encryption_key: str = ""
    airtable_timeout: float = 30.0
    airtable_rate_limit: float = 5.0
    airtable_token_rate_limit: float = 50.0
    # Fraction of each limit kept unused, so network jitter never pushes a second over the limit.
    airtable_rate_headroom: float = 0.1
    airtable_penalty_seconds: float = 30.0
    # The most of a base's queue one user may hold (their requests not yet sent, in seconds of the
    # base's rate: 1 s is 4 requests at 5/s less headroom, besides the one being sent); their
    # surplus gets 503 + Retry-After, so another user's request on that base waits behind no more
    # than this of theirs.
    airtable_fair_share_seconds: float = 1.0
    airtable_queue_timeout: float = 25.0
    airtable_max_retries: int = 3
    airtable_retry_base_seconds: float = 0.25
    # Comma-separated base IDs this platform may reach; empty: every base the token can see.
    airtable_bases: str = ""
    airtable_max_all_records: int = 10_000
    airtable_pool_size: int = 100
    # How many replicas share the Airtable token: while Redis is down each keeps 1/n of the limits.
    airtable_replicas: int = 1
    cache_ttl: float = 30.0
    schema_cache_ttl: float = 300.0
    # How long past its TTL an entry is kept to be served (marked STALE) while Airtable cannot be asked.
    cache_stale_seconds: float = 600.0
    # How long past its TTL an entry is still answered at once while one background call refreshes it.
    cache_revalidate_seconds: float = 60.0
    token_cache_seconds: float = 5.0
    # Every organisation's access to every base through the platform's token, without grants:
    # the embedded development run with the emulator sets "write"; refused in production.
    airtable_grant_all: Literal["", "read", "write"] = ""
    # How long one process trusts a grant it read (a grant revoked elsewhere takes effect within it).
    airtable_grant_cache_seconds: float = 1.0

    @property
    def base_allow_list(self) -> frozenset[str]:
        return frozenset(part.strip() for part in self.airtable_bases.split(",") if part.strip())

    def validate(self) -> None:
        super().validate()
        if not self.airtable_api_url.startswith(("http://", "https://")):
            raise SettingsError("AIRTABLE_API_URL: must be an http(s) URL")
        if self.airtable_rate_limit <= 0:
            raise SettingsError("AIRTABLE_RATE_LIMIT: must be positive")
        if self.airtable_token_rate_limit < 11:
            raise SettingsError("AIRTABLE_TOKEN_RATE_LIMIT: must be at least 11 (requests per second)")
        if not 0 <= self.airtable_rate_headroom < 0.9:
            raise SettingsError("AIRTABLE_RATE_HEADROOM: must be between 0 and 0.9")
        if self.airtable_fair_share_seconds <= 0:
            raise SettingsError("AIRTABLE_FAIR_SHARE_SECONDS: must be positive")
        if self.airtable_replicas < 1:
            raise SettingsError("AIRTABLE_REPLICAS: must be at least 1")
        if self.airtable_queue_timeout <= 0 or self.airtable_timeout <= 0:
            raise SettingsError("AIRTABLE_QUEUE_TIMEOUT: must be positive (and AIRTABLE_TIMEOUT too)")
        if self.airtable_penalty_seconds < 0 or self.airtable_max_retries < 0:
            raise SettingsError("AIRTABLE_PENALTY_SECONDS: must not be negative (nor AIRTABLE_MAX_RETRIES)")
        if min(self.cache_ttl, self.schema_cache_ttl, self.cache_stale_seconds, self.cache_revalidate_seconds) < 0:
            raise SettingsError(
                "CACHE_TTL: must not be negative (nor SCHEMA_CACHE_TTL, CACHE_STALE_SECONDS, CACHE_REVALIDATE_SECONDS)"
            )
        if self.airtable_max_all_records < 1:
            raise SettingsError("AIRTABLE_MAX_ALL_RECORDS: must be at least 1")
        if self.airtable_grant_all and self.is_production:
            raise SettingsError("AIRTABLE_GRANT_ALL: a development setting, refused when ENVIRONMENT=production")
        if not 0 <= self.airtable_grant_cache_seconds <= MAX_GRANT_CACHE_SECONDS:
            raise SettingsError(f"AIRTABLE_GRANT_CACHE_SECONDS: must be between 0 and {MAX_GRANT_CACHE_SECONDS}")
        if self.airtable_token_encryption_key:
            check_secret(
                "AIRTABLE_TOKEN_ENCRYPTION_KEY", self.airtable_token_encryption_key, production=self.is_production
            )
