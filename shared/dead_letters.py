"""The dead-letter streams ``{namespace}:events:{type}:dead`` of the Redis bus: list, replay, drop.

A replay puts the original message back on the type's stream, where the consumer group reads it
as a new message; every other group on that stream sees it again too, and its idempotent handler
skips it if it was applied already.
"""

from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.events import Event, dead_letter_stream, event_stream

PAGE = 1000


class DeadLetterEntry(msgspec.Struct, frozen=True):
    entry_id: str  # in the dead-letter stream
    event_type: str
    group: str
    attempts: int
    reason: str
    dead_since: datetime
    event_id: str | None  # None when the message does not decode
    fields: dict[bytes, bytes]

    @property
    def id(self) -> str:
        """The event's id; an undecodable message has none, its dead-letter entry id stands in."""
        return self.event_id or self.entry_id


class DeadLetters:
    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace

    async def list(self, event_type: str, group: str) -> list[DeadLetterEntry]:
        """The dead letters of ``group`` for ``event_type``, oldest first."""
        stream = dead_letter_stream(self.namespace, event_type)
        entries: list[DeadLetterEntry] = []
        start = "-"
        while True:
            page: Any = await self.redis.xrange(stream, min=start, count=PAGE)
            for entry_id, fields in page:
                if fields.get(b"group", b"").decode() == group:
                    entries.append(_entry(event_type, entry_id.decode(), fields))
            if len(page) < PAGE:
                return entries
            start = "(" + page[-1][0].decode()

    async def replay(self, entry: DeadLetterEntry) -> None:
        """Back on its stream and out of the dead letters, in one transaction. No MAXLEN on the
        stream: that would trim events a group has not read (its consumers trim what all acknowledged)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(event_stream(self.namespace, entry.event_type), {b"event": entry.fields[b"event"]})
            pipe.xdel(dead_letter_stream(self.namespace, entry.event_type), entry.entry_id)
            await pipe.execute()

    async def drop(self, entry: DeadLetterEntry) -> None:
        await self.redis.xdel(dead_letter_stream(self.namespace, entry.event_type), entry.entry_id)


def _entry(event_type: str, entry_id: str, fields: dict[bytes, bytes]) -> DeadLetterEntry:
    milliseconds = int(entry_id.partition("-")[0])
    return DeadLetterEntry(
        entry_id=entry_id,
        event_type=event_type,
        group=fields.get(b"group", b"").decode(),
        attempts=int(fields.get(b"attempts", b"0")),
        reason=fields.get(b"reason", b"").decode(errors="replace"),
        dead_since=datetime.fromtimestamp(milliseconds / 1000, UTC),
        event_id=_event_id(fields.get(b"event", b"")),
        fields=fields,
    )


def _event_id(payload: bytes) -> str | None:
    try:
        return msgspec.json.decode(payload, type=Event).id
    except msgspec.DecodeError:
        return None
