"""argon2id hashing off the event loop, with a bound on concurrent hashes, its memory in huge pages.

Each hash or verification fills ``argon2_memory_kib`` (64 MiB). Taken from malloc, that memory is a
fresh mapping every time (it is above glibc's mmap threshold): 16,384 pages the kernel faults in
and zeroes one at a time, about a quarter of the computation's CPU. :class:`HugePageHasher` hands
argon2 its memory through the library's own allocator hooks (``argon2_context``): one mapping per
computation, advised for transparent huge pages (32 faults of 2 MiB), unmapped once argon2 has
wiped and freed it. Same parameters, same encoded hashes, and about 30 % more verifications per
second (docs/PERFORMANCE.md). Where the advice or cffi callbacks do not exist (not Linux), argon2-cffi's
own ``PasswordHasher`` serves instead, as it does for hashes of another kind or version.
"""

import base64
import ctypes
import hmac
import mmap
import os
import secrets
import sys
from dataclasses import replace
from functools import cache
from typing import Any, Literal

import anyio
import anyio.to_thread
from argon2 import Parameters, PasswordHasher, Type, extract_parameters
from argon2.exceptions import HashingError, InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION, core, error_to_str, ffi
from prometheus_client import Counter

from auth_service.config import AuthSettings

HASHES = Counter(
    "pyairtable_auth_password_hash_computations_total",
    "argon2 computations (hash or verify) performed by the auth service",
    ["operation"],
)


HUGE_PAGE = 2 << 20
ARGON2_OK = 0
ARGON2_MEMORY_ALLOCATION_ERROR = -22


class HugePageMappings:
    """argon2's allocator hooks: each computation's memory an anonymous mapping of its own, starting
    on a huge-page boundary and advised for transparent huge pages (without THP, plain pages as
    before), unmapped when argon2 frees it (argon2 wipes it first)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._mmap = libc.mmap
        self._mmap.restype = ctypes.c_void_p
        self._mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self._munmap = libc.munmap
        self._munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._madvise = libc.madvise
        self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._failed = ctypes.c_void_p(-1).value
        self._held: dict[int, tuple[int, int]] = {}  # start handed to argon2 -> (mapping, length)
        # Called by argon2 in the hashing thread, which cffi lets take the GIL for them.
        self.allocate = ffi.callback("int(uint8_t **, size_t)", self._allocate, error=ARGON2_MEMORY_ALLOCATION_ERROR)
        self.free = ffi.callback("void(uint8_t *, size_t)", self._free)

    def _allocate(self, memory: Any, size: int) -> int:
        length = size + HUGE_PAGE  # room to start on a huge-page boundary
        protection, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        mapping = self._mmap(None, length, protection, flags, -1, 0)
        if mapping is None or mapping == self._failed:
            return ARGON2_MEMORY_ALLOCATION_ERROR
        start = (mapping + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
        self._madvise(start, size, mmap.MADV_HUGEPAGE)
        self._held[start] = (mapping, length)
        memory[0] = ffi.cast("uint8_t *", start)
        return ARGON2_OK

    def _free(self, memory: Any, _size: int) -> None:
        mapping, length = self._held.pop(int(ffi.cast("uintptr_t", memory)))
        self._munmap(mapping, length)


@cache
def huge_page_mappings() -> HugePageMappings | None:
    """The process's hooks, or None where the kernel takes no huge-page advice or cffi makes no callbacks."""
    if sys.platform != "linux" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        return HugePageMappings()
    except (OSError, AttributeError, MemoryError, RuntimeError):
        return None


class HugePageHasher(PasswordHasher):
    """argon2-cffi's ``PasswordHasher``, its argon2id hashes computed with argon2's memory from
    ``mappings``: the library's own ``argon2_ctx`` on the same parameters, the hash encoded as the
    library encodes it, and compared in constant time."""

    mappings: HugePageMappings
    parameters: Parameters

    @classmethod
    def with_mappings(cls, mappings: HugePageMappings, parameters: Parameters) -> "HugePageHasher":
        hasher = cls.from_parameters(parameters)
        assert isinstance(hasher, cls)
        hasher.mappings, hasher.parameters = mappings, parameters
        return hasher

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        if self.type is not Type.ID:
            return super().hash(password, salt=salt)
        salt = salt or os.urandom(self.salt_len)
        digest = self._compute(_secret(password), salt, self.parameters)
        settings = f"m={self.memory_cost},t={self.time_cost},p={self.parallelism}"
        return f"$argon2id$v={ARGON2_VERSION}${settings}${_b64encode(salt)}${_b64encode(digest)}"

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        encoded = hash.decode("ascii", "replace") if isinstance(hash, bytes) else hash  # not ASCII: refused below
        parameters = extract_parameters(encoded)
        if parameters.type is not Type.ID or parameters.version != ARGON2_VERSION:
            return super().verify(hash, password)
        salt_text, expected_text = encoded.rsplit("$", 2)[1:]
        try:
            salt, expected = _b64decode(salt_text), _b64decode(expected_text)
        except ValueError:
            raise InvalidHashError from None
        try:
            digest = self._compute(_secret(password), salt, replace(parameters, hash_len=len(expected)))
        except HashingError as exc:  # parameters argon2 refuses: as the library's verify says it
            raise VerificationError(str(exc)) from None
        if not hmac.compare_digest(digest, expected):
            raise VerifyMismatchError()
        return True

    def _compute(self, secret: bytes, salt: bytes, parameters: Parameters) -> bytes:
        """argon2id of ``secret``; HashingError with the library's reason for what it refuses."""
        out = ffi.new("uint8_t[]", parameters.hash_len)
        secret_buffer, salt_buffer = ffi.new("uint8_t[]", secret), ffi.new("uint8_t[]", salt)
        context = ffi.new(
            "argon2_context *",
            {
                "out": out,
                "outlen": parameters.hash_len,
                "pwd": secret_buffer,
                "pwdlen": len(secret),
                "salt": salt_buffer,
                "saltlen": len(salt),
                "secret": ffi.NULL,
                "secretlen": 0,
                "ad": ffi.NULL,
                "adlen": 0,
                "t_cost": parameters.time_cost,
                "m_cost": parameters.memory_cost,
                "lanes": parameters.parallelism,
                "threads": parameters.parallelism,
                "version": ARGON2_VERSION,
                "allocate_cbk": self.mappings.allocate,
                "free_cbk": self.mappings.free,
                "flags": 0,
            },
        )
        error = core(context, Type.ID.value)
        if error != ARGON2_OK:
            raise HashingError(error_to_str(error))
        return bytes(ffi.buffer(out, parameters.hash_len))


def _secret(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _b64encode(raw: bytes) -> str:
    """Base64 without padding, as argon2 encodes salts and hashes."""
    return base64.b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        parameters = Parameters(
            type=Type.ID,
            version=ARGON2_VERSION,
            salt_len=16,
            hash_len=32,
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        mappings = huge_page_mappings()
        if mappings is None:
            self.hasher = PasswordHasher.from_parameters(parameters)
        else:
            self.hasher = HugePageHasher.with_mappings(mappings, parameters)
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
