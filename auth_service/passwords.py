"""argon2id hashing off the event loop, with a bound on concurrent hashes."""

import secrets

import anyio
import anyio.to_thread
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter

from auth_service.config import AuthSettings

HASHES = Counter(
    "pyairtable_auth_password_hash_computations_total",
    "argon2 computations (hash or verify) performed by the auth service",
    ["operation"],
)


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self.limiter = anyio.CapacityLimiter(settings.hash_concurrency)
        self.computations = 0
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        self._count("hash")
        return await anyio.to_thread.run_sync(self.hasher.hash, password, limiter=self.limiter)

    async def verify(self, password_hash: str, password: str) -> bool:
        self._count("verify")
        return await anyio.to_thread.run_sync(self._verify, password_hash, password, limiter=self.limiter)

    async def prepare(self) -> None:
        """Make the dummy hash at start-up, so the first unknown email costs no extra hash."""
        self._dummy_hash = await anyio.to_thread.run_sync(self.hasher.hash, secrets.token_urlsafe(16))

    async def verify_dummy(self, password: str) -> None:
        """Spend the same time as a real verification, so unknown emails cannot be told apart."""
        if self._dummy_hash is None:
            await self.prepare()
        assert self._dummy_hash is not None
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _count(self, operation: str) -> None:
        self.computations += 1
        HASHES.labels(operation).inc()
