"""The read cache: responses kept in the key-value store (Redis, or in memory when embedded).

A key holds the caller's *token identity* (a hash of the Airtable token, never the token), the
base and a digest of the normalised request. Every write to a base increments the base's
*generation*; an entry remembers the generation it was read at and is void once it differs, so a
write invalidates the base's cached reads at once, on every replica (entry and generation come in
one MGET). Identical misses running at the same time share one producer call: in the process
(one task), and across replicas (a short-lived "filling" mark in the store; the others wait for
the entry).

Past its TTL an entry is still answered at once (marked ``STALE``):

* up to ``revalidate_seconds`` past it, while one background call refreshes it
  (stale-while-revalidate): a popular entry never makes its readers wait for Airtable, nor for
  the queue behind a base's pause;
* up to ``stale_seconds`` past it, while Airtable cannot be asked (the base is paused, Airtable
  fails or is out of reach, the caller's turn would come too late).

While Redis does not answer, the kernel's store keeps entries in the process; a write made
meanwhile is replayed as an invalidation once Redis answers, before anything is read from it, so
an entry cached in Redis before the outage is never served after a write it missed.
"""

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec

from airtable_gateway.metrics import CACHE_RESULTS
from shared.stores import KeyValueStore, StoreUnavailable

CacheState = Literal["HIT", "MISS", "STALE"]
Kind = Literal["records", "schema"]
GENERATION_TTL_SECONDS = 7 * 86400
# While one replica fetches a read, the others wait for its entry instead of asking Airtable too.
FILL_LOCK_SECONDS = 30.0
FILL_POLL_SECONDS = 0.05


class CacheEntry(msgspec.Struct, array_like=True):
    status: int
    body: bytes
    etag: str
    stored_at: float
    generation: int


class Cached(msgspec.Struct):
    """A response body and how it was obtained."""

    status: int
    body: bytes
    etag: str
    state: CacheState
    age: int = 0


class Produced(msgspec.Struct):
    status: int
    body: bytes


class StaleAllowed(Exception):
    """Mixed into errors that mean "Airtable cannot be asked now": a stale entry may answer instead."""


Producer = Callable[[], Awaitable[Produced]]
PausedFor = Callable[[], Awaitable[float]]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CacheEntry)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def token_identity(token: str) -> str:
    """What cache keys and rate limits know of a token: a hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class ResponseCache:
    def __init__(self, store: KeyValueStore, stale_seconds: float, revalidate_seconds: float = 0.0) -> None:
        self.store = store
        self.stale_seconds = stale_seconds
        self.revalidate_seconds = min(revalidate_seconds, stale_seconds)
        self._inflight: dict[str, asyncio.Task[Cached]] = {}
        self._missed_invalidations: set[str] = set()
        self._replays = 0

    async def invalidate(self, base: str) -> None:
        """Every cached read of ``base`` (for every token) is void from now on."""
        try:
            await self.store.shared.incr(_generation_key(base), GENERATION_TTL_SECONDS)
        except StoreUnavailable:
            self._missed_invalidations.add(base)
            await self.store.incr(_generation_key(base), GENERATION_TTL_SECONDS)  # the process's stand-in

    async def _replay_missed_invalidations(self) -> None:
        """Redis answers again: the writes it did not hear of void their bases' entries there too."""
        for base in list(self._missed_invalidations):
            try:
                await self.store.shared.incr(_generation_key(base), GENERATION_TTL_SECONDS)
            except StoreUnavailable:
                return
            self._missed_invalidations.discard(base)
            self._replays += 1

    async def aclose(self) -> None:
        """Stop the background refreshes still running (at shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def fetch(
        self,
        token_id: str,
        base: str,
        kind: Kind,
        request_identity: str,
        ttl: float,
        produce: Producer,
        paused_for: PausedFor,
    ) -> Cached:
        digest = hashlib.sha256(request_identity.encode()).hexdigest()[:40]
        key = f"airtable:cache:{token_id}:{base}:{kind}:{digest}"
        replays = self._replays
        raw, generation_bytes = await self.store.get_many([key, _generation_key(base)])
        if self._missed_invalidations:
            await self._replay_missed_invalidations()
        if replays != self._replays:
            # Read before a write missed during an outage was replayed: read again after it.
            raw, generation_bytes = await self.store.get_many([key, _generation_key(base)])
        generation = int(generation_bytes or 0)
        entry = _decoder.decode(raw) if raw is not None else None
        if entry is not None and entry.generation == generation:
            age = time.time() - entry.stored_at
            if age < ttl:
                return self._answer(entry, "HIT")
            if await paused_for() > 0:
                return self._answer(entry, "STALE")
            if age < ttl + self.revalidate_seconds:
                self._flight(key, generation, ttl, produce)
                return self._answer(entry, "STALE")
        elif entry is not None:
            entry = None  # written since: neither fresh nor stale
        task, leader = self._flight(key, generation, ttl, produce)
        try:
            result = await asyncio.shield(task)
        except StaleAllowed:
            if entry is None:
                raise
            return self._answer(entry, "STALE")
        if not leader:
            CACHE_RESULTS.labels("coalesced").inc()
            return msgspec.structs.replace(result, state="HIT")
        return result

    def _flight(self, key: str, generation: int, ttl: float, produce: Producer) -> tuple[asyncio.Task[Cached], bool]:
        """The call producing this entry: the one already running (False), or a new one (True)."""
        flight = f"{key}:{generation}"
        task = self._inflight.get(flight)
        if task is not None:
            return task, False
        task = asyncio.ensure_future(self._produce(key, generation, ttl, produce))
        self._inflight[flight] = task
        task.add_done_callback(lambda done: self._finished(flight, done))
        return task, True

    async def _produce(self, key: str, generation: int, ttl: float, produce: Producer) -> Cached:
        filling = f"{key}:filling:{generation}"
        if ttl > 0 and await self.store.incr(filling, FILL_LOCK_SECONDS) > 1:
            # Another replica is already asking Airtable for this very read: wait for its answer.
            filled = await self._wait_for_fill(key, filling, generation)
            if filled is not None:
                CACHE_RESULTS.labels("coalesced").inc()
                return Cached(status=filled.status, body=filled.body, etag=filled.etag, state="HIT")
        try:
            produced = await produce()
            etag = etag_of(produced.body)
            if produced.status == 200 and ttl > 0:
                entry = CacheEntry(produced.status, produced.body, etag, time.time(), generation)
                await self.store.set(key, _encoder.encode(entry), ttl + self.stale_seconds)
        finally:
            if ttl > 0:
                await self.store.delete(filling)
        CACHE_RESULTS.labels("miss").inc()
        return Cached(status=produced.status, body=produced.body, etag=etag, state="MISS")

    async def _wait_for_fill(self, key: str, filling: str, generation: int) -> CacheEntry | None:
        """The entry another replica stores, or None once it gave up (or died: the mark expires)."""
        while True:
            await asyncio.sleep(FILL_POLL_SECONDS)
            raw, mark = await self.store.get_many([key, filling])
            if raw is not None:
                entry = _decoder.decode(raw)
                if entry.generation == generation:
                    return entry
            if mark is None:
                return None

    def _finished(self, key: str, task: asyncio.Task[Cached]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: a failure nobody awaited any more is not logged as lost

    @staticmethod
    def _answer(entry: CacheEntry, state: CacheState) -> Cached:
        CACHE_RESULTS.labels(state.lower()).inc()
        age = max(0, int(time.time() - entry.stored_at))
        return Cached(status=entry.status, body=entry.body, etag=entry.etag, state=state, age=age)


def _generation_key(base: str) -> str:
    return f"airtable:generation:{base}"
