"""Redis Streams plumbing shared by the event bus (shared/events.py) and the usage pipeline
(shared/usage.py): bounded appends, trimming what every group has acknowledged, and consumer
groups that come back by themselves when Redis has lost them.

Bounded, and never silently lossy. Consumers trim every entry that all groups of the stream have
acknowledged (:func:`trim_acknowledged`), so a healthy stream holds only what is in flight. An
append that would take the stream past ``max_bytes`` of memory (its consumers are down or far
behind) is refused whole with :class:`StreamFull`, counted and logged, instead of trimming entries
some group has not read (what ``XADD MAXLEN`` would do). The bound is in bytes, not entries: a
usage message holds 1 to 500 records. What a refusal means is the producer's call:
the outbox keeps its events and publishes them later, the gateway counts the usage records it drops.
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

logger = logging.getLogger("shared.streams")

REFUSED = Counter(
    "pyairtable_stream_refused",
    "Entries not appended because the stream was full of entries its consumer groups had not acknowledged",
    ["stream"],
)
TRIMMED = Counter(
    "pyairtable_stream_trimmed", "Entries trimmed once every consumer group had acknowledged them", ["stream"]
)
LOST = Counter(
    "pyairtable_stream_lost",
    "Entries a group had been given but that were gone from the stream when claimed again (deleted by hand)",
    ["stream", "group"],
)
GROUPS_RECREATED = Counter(
    "pyairtable_stream_groups_recreated",
    "Consumer groups created again because Redis no longer had them (restarted empty, or the stream deleted)",
    ["stream", "group"],
)

# Every payload or none: a producer's batch is refused whole, never cut in two. MEMORY USAGE
# samples a few of the stream's nodes: cheap, and exact enough for a bound of megabytes.
_APPEND_IF_ROOM = """
local used = redis.call('MEMORY', 'USAGE', KEYS[1]) or 0
for i = 3, #ARGV do
    used = used + #ARGV[i]
end
if used > tonumber(ARGV[1]) then
    return 0
end
for i = 3, #ARGV do
    redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[i])
end
return #ARGV - 2
"""
REFUSAL_LOG_SECONDS = 10.0  # a producer refused 10 times a second logs once per this, with the count
_refusals_unlogged: dict[str, tuple[float, int]] = {}  # stream label -> (last logged, refused since)


class StreamFull(RedisError):
    """The stream takes as much memory with unacknowledged entries as it may: nothing was appended."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(value: Any) -> tuple[int, int]:
    milliseconds, _, sequence = _text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


def is_missing_group(exc: BaseException) -> bool:
    """Redis answered NOGROUP: the stream or its consumer group is gone (Redis restarted empty)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def append(redis: Redis, stream: str, field: str, payloads: Sequence[bytes], max_bytes: int, label: str) -> None:
    """Append one entry ``{field: payload}`` per payload, all in one atomic step, unless the stream
    would then take more than ``max_bytes``: then :class:`StreamFull` and nothing appended."""
    if not payloads:
        return
    added: Any = await redis.eval(_APPEND_IF_ROOM, 1, stream, max_bytes, field, *payloads)
    if int(added) == 0:
        REFUSED.labels(label).inc(len(payloads))
        _log_refusal(label, len(payloads), max_bytes)
        raise StreamFull(f"{label}: {max_bytes} bytes of entries not yet acknowledged")


def _log_refusal(label: str, refused: int, max_bytes: int) -> None:
    logged_at, unlogged = _refusals_unlogged.get(label, (0.0, 0))
    unlogged += refused
    now = time.monotonic()
    if now - logged_at < REFUSAL_LOG_SECONDS:
        _refusals_unlogged[label] = (logged_at, unlogged)
        return
    _refusals_unlogged[label] = (now, 0)
    logger.error(
        "stream full: its consumer groups are behind; entries refused, none trimmed",
        extra={"stream": label, "refused": unlogged, "max_bytes": max_bytes},
    )


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Create ``group`` at the stream's start (and the stream); False if it already existed."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def group_recreated(label: str, group: str) -> None:
    """Say that a consumer group known before had to be created again."""
    GROUPS_RECREATED.labels(label, group).inc()
    logger.warning(
        "consumer group created again: Redis had lost it (restarted empty, or the stream deleted)",
        extra={"stream": label, "group": group},
    )


def entry_lost(label: str, group: str, entry_id: Any) -> None:
    """An entry given to ``group`` is gone from the stream: acknowledged, but never silently."""
    LOST.labels(label, group).inc()
    logger.error(
        "stream entry lost before it was processed: acknowledged as gone",
        extra={"stream": label, "group": group, "entry_id": _text(entry_id)},
    )


Entry = tuple[bytes, dict[bytes, bytes]]


def claimed_entries(reply: Any, label: str, group: str) -> tuple[list[Entry], list[bytes]]:
    """What an XAUTOCLAIM reply hands over, and the ids of entries deleted from the stream while
    pending (Redis 7 lists them apart, Redis 6.2 gives them without fields): those are reported
    lost, never skipped quietly; the caller acknowledges them."""
    entries: list[Entry] = []
    gone: list[bytes] = list(reply[2]) if len(reply) > 2 else []
    for entry_id, fields in reply[1]:
        if fields is None:
            gone.append(entry_id)
        else:
            entries.append((entry_id, fields))
    for entry_id in gone:
        entry_lost(label, group, entry_id)
    return entries, gone


async def trim_acknowledged(redis: Redis, stream: str, label: str) -> int:
    """Trim the entries that every consumer group has acknowledged; how many went.

    The oldest entry a group still needs is its oldest pending one, else the one after its
    last-delivered id (that one is kept: it marks where the group is). A stream without groups is
    left alone: a group created later reads it from the start."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return 0
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for group in groups:
        needed = _stream_id(group["last-delivered-id"])
        if group["pending"]:
            summary: Any = await redis.xpending(stream, _text(group["name"]))
            if summary["min"] is not None:
                needed = min(needed, _stream_id(summary["min"]))
        floor = needed if floor is None else min(floor, needed)
    if floor is None or floor == (0, 0):  # no group has been given anything yet
        return 0
    trimmed = int(await redis.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))
    if trimmed:
        TRIMMED.labels(label).inc(trimmed)
    return trimmed


class GroupReader:
    """One consumer of one consumer group on one stream: what the event bus and the usage pipeline
    both do to read a stream at least once.

    The group is created when missing, and created again (counted and logged) when Redis has lost
    it: a read that meets NOGROUP returns nothing and the next one creates the group. Entries left
    unacknowledged longer than ``reclaim_after_seconds`` (their handler failed, or their consumer
    died) are claimed by :meth:`reclaim`; entries deleted meanwhile are acknowledged as lost."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer: str,
        label: str,
        reclaim_after_seconds: float = 30.0,
        trim_interval_seconds: float = 1.0,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.label = label
        self.reclaim_after_ms = max(1, int(reclaim_after_seconds * 1000))
        self.trim_interval_seconds = trim_interval_seconds
        self._group_ready = False
        self._group_known = False  # created or found once: creating it again means Redis lost it
        self._trimmed_at = 0.0

    async def reclaim(self, count: int) -> list[Entry]:
        """Entries pending too long, now this consumer's."""
        await self._group_exists()
        try:
            reply: Any = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.reclaim_after_ms, start_id="0-0", count=count
            )
        except ResponseError as exc:
            return self._group_lost(exc)
        entries, gone = claimed_entries(reply, self.label, self.group)
        if gone:
            await self.redis.xack(self.stream, self.group, *gone)
        return entries

    async def read_new(self, count: int, block_seconds: float) -> list[Entry]:
        """Entries never delivered to the group, waiting up to ``block_seconds`` for the first."""
        await self._group_exists()
        block = max(1, int(block_seconds * 1000))
        try:
            replies: Any = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block
            )
        except ResponseError as exc:
            return self._group_lost(exc)
        return [entry for _stream, messages in replies or [] for entry in messages]

    async def delivery_counts(self, first: bytes, last: bytes) -> dict[bytes, int]:
        """How many times each of this consumer's pending entries between two ids was delivered."""
        rows: Any = await self.redis.xpending_range(
            self.stream, self.group, min=first, max=last, count=1000, consumername=self.consumer
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def ack(self, *entry_ids: bytes | str) -> None:
        if entry_ids:
            await self.redis.xack(self.stream, self.group, *entry_ids)

    async def trim_when_due(self) -> None:
        """Trim what every group has acknowledged, at most once a ``trim_interval_seconds``."""
        if time.monotonic() - self._trimmed_at >= self.trim_interval_seconds:
            self._trimmed_at = time.monotonic()
            await trim_acknowledged(self.redis, self.stream, self.label)

    async def _group_exists(self) -> None:
        if not self._group_ready:
            if await ensure_group(self.redis, self.stream, self.group) and self._group_known:
                group_recreated(self.label, self.group)
            self._group_ready = self._group_known = True

    def _group_lost(self, exc: ResponseError) -> list[Entry]:
        if not is_missing_group(exc):
            raise exc
        self._group_ready = False  # the next read creates it again
        return []
