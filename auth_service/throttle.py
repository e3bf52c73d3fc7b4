"""Login throttling: per client IP (fixed window) and per account (exponential lock-out).

A throttled attempt is refused before any password hash is computed. Accounts are keyed by a
hash of the normalised email, so unknown emails are throttled exactly like real ones.

An account's attempt is counted before its password is verified and stays a failure unless
the password proves right, and only one verification per account runs at a time; so
attempts sent in parallel, from as many addresses as you like, get no more verifications than
the same attempts sent one after another. Only the store's atomic ``incr`` orders them, which
Redis and the in-process store both provide.
"""

import hashlib
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec

from auth_service.config import AuthSettings
from auth_service.errors import AccountLocked, TooManyAttempts
from shared.http import address_key
from shared.stores import KeyValueStore

FAILURE_MEMORY_SECONDS = 3600
# Longer than a verification waits for a hashing thread under load; a slot whose holder died
# frees itself after this.
VERIFICATION_SLOT_SECONDS = 10.0
# How soon a client refused because another verification runs may try again.
BUSY_RETRY_AFTER_SECONDS = 1


class Attempt(msgspec.Struct, frozen=True):
    """One counted verification: ``locks_account`` when its failure leaves the account locked."""

    locks_account: bool


class Throttle:
    def __init__(self, store: KeyValueStore, settings: AuthSettings) -> None:
        self.store = store
        self.settings = settings

    async def check_ip(self, action: str, ip: str) -> None:
        """At most ``ip_attempts_per_minute`` per client address (an IPv6 client per /64, as the gateway counts)."""
        window = int(time.time() // 60)
        count = await self.store.incr(f"throttle:ip:{action}:{address_key(ip)}:{window}", 60)
        if count > self.settings.ip_attempts_per_minute:
            retry_after = 60 - int(time.time() % 60)
            raise TooManyAttempts(retry_after)

    async def check_address(self, action: str, email: str) -> None:
        """At most ``mail_per_address_per_hour`` mails of one kind to one address (known or not)."""
        window = int(time.time() // 3600)
        count = await self.store.incr(f"throttle:mail:{action}:{_account(email)}:{window}", 3600)
        if count > self.settings.mail_per_address_per_hour:
            raise TooManyAttempts(3600 - int(time.time() % 3600))

    @asynccontextmanager
    async def verification(self, email: str) -> AsyncIterator[Attempt]:
        """Hold the account's one verification slot, with this attempt already counted as a
        failure; ``succeeded`` inside the block clears the account's failures. The attempt yielded
        says whether its failure locks the account (so the lock can be audited).

        Raises AccountLocked, before any hash is computed, when the account is locked or
        another verification of it is running.
        """
        account = _account(email)
        await self._refuse_if_locked(account)
        attempt = await self.store.incr(_failures_key(account), FAILURE_MEMORY_SECONDS)
        if attempt >= self.settings.login_failures_before_lockout:
            # Locked now, as if this attempt failed: parallel attempts see it at once.
            await self.store.set(_lock_key(account), str(attempt), self._lockout_seconds(attempt))
        if not await self._take_slot(account):
            raise AccountLocked(await self._retry_after(account))
        try:
            # The account may have been locked since we looked, by the previous holder's failure
            # or by an attempt counted after ours; our own lock (its value is our attempt's
            # number, which no other attempt has) does not count.
            holder = await self.store.get(_lock_key(account))
            if holder is not None and holder != str(attempt).encode():
                raise AccountLocked(await self._retry_after(account))
            yield Attempt(locks_account=attempt >= self.settings.login_failures_before_lockout)
        finally:
            await self.store.delete(_slot_key(account))

    async def succeeded(self, email: str) -> None:
        """The password proved right: the account's failures and lock are forgotten."""
        account = _account(email)
        await self.store.delete(_failures_key(account), _lock_key(account))

    def _lockout_seconds(self, attempt: int) -> int:
        doubling: int = 2 ** (attempt - self.settings.login_failures_before_lockout)
        return min(self.settings.lockout_base_seconds * doubling, self.settings.lockout_max_seconds)

    async def _refuse_if_locked(self, account: str) -> None:
        remaining = await self.store.ttl(_lock_key(account))
        if remaining is not None:
            raise AccountLocked(math.ceil(remaining))

    async def _take_slot(self, account: str) -> bool:
        # Look before incrementing: every ``incr`` re-arms the expiry, so refused attempts
        # must not keep a dead holder's slot alive.
        if await self.store.get(_slot_key(account)) is not None:
            return False
        return await self.store.incr(_slot_key(account), VERIFICATION_SLOT_SECONDS) == 1

    async def _retry_after(self, account: str) -> int:
        remaining = await self.store.ttl(_lock_key(account))
        return math.ceil(remaining) if remaining is not None else BUSY_RETRY_AFTER_SECONDS


def _account(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:32]


def _failures_key(account: str) -> str:
    return f"throttle:failures:{account}"


def _lock_key(account: str) -> str:
    return f"throttle:lock:{account}"


def _slot_key(account: str) -> str:
    return f"throttle:verifying:{account}"
