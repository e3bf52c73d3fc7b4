"""Login throttling: per client IP (fixed window) and per account (exponential lock-out).

A throttled attempt is refused before any password hash is computed. Accounts are keyed by a
hash of the normalised email, so unknown emails are throttled exactly like real ones.
"""

import hashlib
import math
import time

from auth_service.config import AuthSettings
from auth_service.errors import TooManyAttempts
from shared.stores import KeyValueStore

FAILURE_MEMORY_SECONDS = 3600


class Throttle:
    def __init__(self, store: KeyValueStore, settings: AuthSettings) -> None:
        self.store = store
        self.settings = settings

    async def check_ip(self, action: str, ip: str) -> None:
        window = int(time.time() // 60)
        count = await self.store.incr(f"throttle:ip:{action}:{ip}:{window}", 60)
        if count > self.settings.ip_attempts_per_minute:
            retry_after = 60 - int(time.time() % 60)
            raise TooManyAttempts(retry_after)

    async def check_account(self, email: str) -> None:
        remaining = await self.store.ttl(self._lock_key(email))
        if remaining is not None:
            raise TooManyAttempts(math.ceil(remaining))

    async def record_failure(self, email: str) -> None:
        failures = await self.store.incr(self._failures_key(email), FAILURE_MEMORY_SECONDS)
        beyond = failures - self.settings.login_failures_before_lockout
        if beyond >= 0:
            wait = min(self.settings.lockout_base_seconds * 2**beyond, self.settings.lockout_max_seconds)
            await self.store.set(self._lock_key(email), b"1", wait)

    async def record_success(self, email: str) -> None:
        await self.store.delete(self._failures_key(email))

    @staticmethod
    def _account(email: str) -> str:
        return hashlib.sha256(email.encode()).hexdigest()[:32]

    def _failures_key(self, email: str) -> str:
        return f"throttle:failures:{self._account(email)}"

    def _lock_key(self, email: str) -> str:
        return f"throttle:lock:{self._account(email)}"
