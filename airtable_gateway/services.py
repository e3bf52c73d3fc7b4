"""The Airtable gateway's logic: rate-limited, retried, cached calls to Airtable, and the
operations the routes offer on top of them. No Litestar imports."""

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

import msgspec
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from airtable_gateway.cache import Cached, Kind, Produced, ResponseCache, StaleAllowed, etag_of, token_identity
from airtable_gateway.client import AirtableClient, Lost, NotSent, UpstreamRequest, UpstreamResponse
from airtable_gateway.config import AirtableSettings
from airtable_gateway.errors import (
    AirtableError,
    AirtableNotConfigured,
    AirtablePaused,
    AirtableServerError,
    AirtableTimeout,
    AirtableUnavailable,
    BaseNotAllowed,
    BaseNotGranted,
    BaseReadOnly,
    FairShareExceeded,
    GrantNotFound,
    GrantsNotVisible,
    GrantsUnavailable,
    QueueTimeout,
    ReadOnlyRole,
    StoredTokenUnavailable,
    StoredTokenUnreadable,
    UserTokensDisabled,
)
from airtable_gateway.metrics import (
    FAIR_SHARE_REFUSALS,
    PAUSE_REFUSALS,
    QUEUE_TIMEOUTS,
    QUEUE_WAIT,
    UPSTREAM_REQUESTS,
    UPSTREAM_THROTTLED,
)
from airtable_gateway.models import BaseGrant, outbox
from airtable_gateway.repositories import GrantRepository, UserTokenRepository
from airtable_gateway.scheduler import Outcome, Scheduler, jittered
from airtable_gateway.schemas import (
    MAX_RECORDS_PER_CALL,
    BatchResponse,
    CreateBody,
    Deleted,
    DeletedList,
    ErrorDetail,
    Fields,
    Grant,
    GrantList,
    Record,
    RecordChange,
    RecordResult,
    RecordsCreate,
    RecordsUpdate,
    TokenStatus,
    UpdateBody,
    UpsertRequest,
)
from shared.audit import record_audit
from shared.crypto import UserSecretCipher
from shared.db import is_database_unavailable, utcnow
from shared.errors import NotFound, Unprocessable
from shared.security import ORG_MANAGERS, Identity
from shared.stores import KeyValueStore

WRITE_CHUNK = 10
ALL_BASES = "*"  # the grants cache's key for an organisation's whole list
ORGANIZATION_DELETED = "organization.deleted"  # auth's event: the organisation's grants are dropped
PAGE_SIZE = 100
META_BASE = "_meta"  # the scheduler's key for calls that concern no base (the list of bases)
RETRYABLE_METHODS = frozenset({"GET", "DELETE", "PUT", "PATCH"})
MAX_BASE_PAGES = 50
PAUSE_SKEW_SECONDS = 0.05
# A stored token's lookup, bounded so that a hung database answers (from what is known) in time;
# after a failure the database is left alone this long and the last known tokens serve.
DATABASE_RETRY_SECONDS = 5.0
NO_OWN_TOKEN = "-"  # noqa: S105 (a marker: "this user has no token of their own")
# A marker: "this user stored a token that no longer decrypts" (a NUL: never a real token).
UNREADABLE_TOKEN = "\x00unreadable"  # noqa: S105
IDENTITY_TTL = 30 * 86400
logger = logging.getLogger("airtable_gateway")

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Caller:
    """Whom a request is for: who it counts against in a base's queue (``share``: the caller's
    active organisation, else the user) and the Airtable token it uses, known at least by its
    identity (what cache keys hold)."""

    share: str
    token_id: str
    # None: the user's own token, stored in a database that cannot be read now (cache hits only).
    token: str | None
    # The user's own Airtable token (Airtable's permissions apply to it, not the platform's grants).
    own_token: bool = False


def fair_share_unit(identity: Identity) -> str:
    """What a caller's requests count against in a base's queue: their active organisation, so
    that one organisation's members together cannot starve another's; without one, the user."""
    if identity.tenant_id is not None:
        return f"org:{identity.tenant_id}"
    return f"user:{identity.user_id}"


@dataclass(eq=False)
class Upstream:
    """Sends requests to Airtable in their turn under the rate limits, retries what is safe to
    retry, and caches reads. One per app."""

    settings: AirtableSettings
    client: AirtableClient
    scheduler: Scheduler
    cache: ResponseCache

    async def send(self, caller: Caller, request: UpstreamRequest) -> UpstreamResponse:
        """Airtable's answer. A 429 pauses the base (every replica): a read is then refused (503
        with the time left), a write goes again after the pause; 5xx and lost connections are
        retried only for ``retryable`` requests; a request whose turn would come after its
        deadline is a QueueTimeout (503), one past the caller's share a FairShareExceeded (503)."""
        if caller.token is None:
            raise StoredTokenUnavailable()
        deadline = time.monotonic() + self.settings.airtable_queue_timeout
        attempt = 0
        while True:
            await self._wait_for_slot(caller, request, deadline)
            try:
                response = await self.client.send(caller.token, request)
            except NotSent:
                UPSTREAM_REQUESTS.labels(request.method, "0").inc()
                failure: Exception = AirtableUnavailable()
            except Lost as exc:
                UPSTREAM_REQUESTS.labels(request.method, "0").inc()
                failure = AirtableTimeout() if exc.timed_out else AirtableUnavailable()
                if not request.retryable:
                    raise failure from None
            else:
                UPSTREAM_REQUESTS.labels(request.method, str(response.status)).inc()
                if response.status == 429:
                    # Airtable refused without doing anything: sending again later is safe for any method.
                    UPSTREAM_THROTTLED.inc()
                    pause = jittered(max(self.settings.airtable_penalty_seconds, response.retry_after or 0))
                    await self.scheduler.pause(request.base, pause)
                    logger.warning("airtable answered 429: base paused", extra={"base": request.base, "seconds": pause})
                    if request.read:
                        PAUSE_REFUSALS.inc()
                        raise AirtablePaused(pause)
                    attempt += 1
                    if attempt > self.settings.airtable_max_retries:
                        raise QueueTimeout(await self.scheduler.paused_for(request.base))
                    continue
                if response.status < 500 or not request.retryable:
                    return response
                failure = airtable_error(response)
            attempt += 1
            delay = self._backoff(attempt)
            if attempt > self.settings.airtable_max_retries or time.monotonic() + delay > deadline:
                raise failure
            await asyncio.sleep(delay)

    async def _wait_for_slot(self, caller: Caller, request: UpstreamRequest, deadline: float) -> None:
        started = time.monotonic()
        while True:
            reservation = await self.scheduler.reserve(
                request.base,
                caller.token_id,
                caller.share,
                max(0.0, deadline - time.monotonic()),
                refuse_if_paused=request.read,
            )
            if reservation.outcome == Outcome.PAUSED:
                PAUSE_REFUSALS.inc()
                raise AirtablePaused(reservation.wait)
            if reservation.outcome == Outcome.SHARE:
                FAIR_SHARE_REFUSALS.inc()
                raise FairShareExceeded(reservation.wait)
            if reservation.outcome == Outcome.DEADLINE:
                QUEUE_TIMEOUTS.inc()
                raise QueueTimeout(max(reservation.wait, await self.scheduler.paused_for(request.base)))
            if reservation.wait > 0:
                await asyncio.sleep(reservation.wait)
                # A 429 that paused the base while this request waited voids its slot: a read is
                # refused, a write goes after the pause. (A few ms left of a pause its slot already
                # followed is only clock skew.)
                left = await self.scheduler.paused_for(request.base)
                if left > PAUSE_SKEW_SECONDS:
                    if request.read:
                        PAUSE_REFUSALS.inc()
                        raise AirtablePaused(left)
                    continue
            QUEUE_WAIT.observe(time.monotonic() - started)
            return

    def _backoff(self, attempt: int) -> float:
        base = self.settings.airtable_retry_base_seconds * 2 ** (attempt - 1)
        return float(base * random.uniform(0.5, 1.5))  # noqa: S311 (jitter, not a secret)

    async def read(
        self,
        caller: Caller,
        request: UpstreamRequest,
        kind: Kind,
        identity: str,
        produce: Callable[[], Awaitable[Produced]],
    ) -> Cached:
        """A cached read: ``identity`` is the normalised request, ``produce`` what a miss runs."""
        ttl = self.settings.cache_ttl if kind == "records" else self.settings.schema_cache_ttl
        return await self.cache.fetch(
            caller.token_id,
            request.base,
            kind,
            identity,
            ttl,
            produce,
            lambda: self.scheduler.paused_for(request.base),
        )

    async def checked(self, caller: Caller, request: UpstreamRequest) -> Any:
        """Airtable's JSON answer, or its error raised as an AirtableError."""
        response = await self.send(caller, request)
        if response.status >= 400:
            raise airtable_error(response)
        return json_object(response.body)


def json_object(body: bytes) -> dict[str, Any]:
    """Airtable's answer as a JSON object; anything else is a bad gateway (502), never a 500."""
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        document = None
    if not isinstance(document, dict):
        raise AirtableUnavailable("Airtable answered something that is not a JSON object.")
    return document


def airtable_error(response: UpstreamResponse) -> AirtableError:
    """Airtable's ``{"error": {"type", "message"}}`` (or ``{"error": "TYPE"}``) as an exception."""
    error_type, message = "UPSTREAM_ERROR", None
    try:
        document = msgspec.json.decode(response.body)
    except msgspec.DecodeError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        error_type = str(error.get("type") or error_type)
        message = str(error["message"]) if error.get("message") is not None else None
    elif isinstance(error, str):
        error_type = error
    cls = AirtableServerError if response.status >= 500 else AirtableError
    return cls(response.status, error_type, message)


@dataclass(frozen=True)
class ListQuery:
    view: str | None = None
    fields: Sequence[str] = ()
    filter_by_formula: str | None = None
    sort: Sequence[tuple[str, str]] = ()
    page_size: int | None = None
    offset: str | None = None
    max_records: int | None = None
    all: bool = False

    def airtable_params(self) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if self.page_size is not None:
            params.append(("pageSize", str(self.page_size)))
        if self.max_records is not None:
            params.append(("maxRecords", str(self.max_records)))
        if self.view:
            params.append(("view", self.view))
        if self.filter_by_formula:
            params.append(("filterByFormula", self.filter_by_formula))
        params.extend(("fields[]", field) for field in self.fields)
        for index, (field, direction) in enumerate(self.sort):
            params.extend([(f"sort[{index}][field]", field), (f"sort[{index}][direction]", direction)])
        return params


class DatabaseDown(Exception):
    """The database could not be read (the name of what failed: a class name, no data)."""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


async def read_database(
    sessionmaker: async_sessionmaker[AsyncSession], query: Callable[[AsyncSession], Awaitable[V]]
) -> V:
    """``query`` in a session of its own; DatabaseDown when the database cannot be reached."""
    try:
        async with sessionmaker() as session:
            return await query(session)
    except (OperationalError, DBAPIError, PoolTimeoutError, OSError) as exc:
        if not is_database_unavailable(exc):
            raise
        raise DatabaseDown(type(exc).__name__) from None


class LastKnown(Generic[K, V]):
    """Answers read from the database on the request path, kept in this process ``fresh_seconds``,
    one read per key at a time however many requests arrive together. After a failed read the
    database is left alone ``DATABASE_RETRY_SECONDS`` and the last known answers serve (past their
    freshness); a key without one is DatabaseDown. A read is one statement, waited for at most
    ``lookup_seconds`` (the service's statement timeout) whatever it waits on."""

    def __init__(self, fresh_seconds: float, serving: str, lookup_seconds: float) -> None:
        self.fresh_seconds = fresh_seconds
        self.lookup_seconds = lookup_seconds
        self.serving = serving  # what the warning says serves while the database is down
        # key -> (fresh until, the answer); kept past freshness as the last known one.
        self._answers: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}
        self._database_down_until = 0.0

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        cached = self._answers.get(key)
        now = time.monotonic()
        if cached is not None and (cached[0] > now or now < self._database_down_until):
            return cached[1]  # fresh, or the last known while the database is down
        if now < self._database_down_until:
            raise DatabaseDown()
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load(key, load))
            loading.add_done_callback(lambda done: self._loaded(key, done))
        try:
            # Bounded here, whatever the lookup itself waits for (a hung server's close included);
            # the lookup is shielded: cancelling a query midway can wedge its connection.
            async with asyncio.timeout(self.lookup_seconds):
                return await asyncio.shield(loading)
        except (DatabaseDown, TimeoutError) as exc:
            self._database_down(exc)
            if cached is not None:
                return cached[1]
            raise DatabaseDown() from None

    def knows(self, key: K, answer: V) -> bool:
        """Whether ``answer`` is what this process last read for ``key``."""
        cached = self._answers.get(key)
        return cached is not None and cached[1] == answer

    def forget(self, key: K) -> None:
        """Read the key again at once (it changed here)."""
        self._answers.pop(key, None)

    def forget_where(self, which: Callable[[K], bool]) -> None:
        """Read these keys again at once (they changed here)."""
        for key in [key for key in self._answers if which(key)]:
            self.forget(key)

    def _database_down(self, exc: BaseException) -> None:
        if time.monotonic() >= self._database_down_until:
            error = str(exc) if isinstance(exc, DatabaseDown) else type(exc).__name__  # a class name, no data
            logger.warning(f"database unavailable: {self.serving}", extra={"error": error})
        self._database_down_until = time.monotonic() + DATABASE_RETRY_SECONDS

    def _loaded(self, key: K, done: asyncio.Future[V]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failure is answered by the waiting request, not logged again

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        answer = await load()
        if len(self._answers) > 10_000:
            self._answers.clear()
        self._answers[key] = (time.monotonic() + self.fresh_seconds, answer)
        return answer


class Grants:
    """Organisations' base grants, read from the database per request: one lookup on the
    (organisation, base) index, kept in this process ``cache_seconds`` (at most 2 s: a grant
    changed or revoked on another replica takes effect within that; on this one at once).

    While the database cannot be read, the last answer this process knows for an (organisation,
    base) serves; without one the request is refused (503), never served from a cache. With
    ``grant_all`` (development with the emulator) every organisation has that access to every base."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        grant_all: str,
        cache_seconds: float,
        lookup_seconds: float,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.grant_all = grant_all
        # (organisation, base or ALL_BASES) -> the answer: ``read``, ``write``, None, or every base's.
        self._known: LastKnown[tuple[uuid.UUID, str], Any] = LastKnown(
            cache_seconds, "last known grants serve", lookup_seconds
        )

    async def access(self, organization_id: uuid.UUID, base_id: str) -> str | None:
        """``read``, ``write``, or None: no grant."""
        if self.grant_all:
            return self.grant_all
        answer: str | None = await self._read(
            (organization_id, base_id), lambda grants: grants.access_of(organization_id, base_id)
        )
        return answer

    async def bases(self, organization_id: uuid.UUID) -> Mapping[str, str] | None:
        """The bases the organisation is granted (base -> access); None: every base."""
        if self.grant_all:
            return None
        answer: Mapping[str, str] = await self._read(
            (organization_id, ALL_BASES), lambda grants: grants.bases_of(organization_id)
        )
        return answer

    def forget(self, organization_id: uuid.UUID) -> None:
        """A grant of the organisation changed here: read its grants again at once."""
        self._known.forget_where(lambda key: key[0] == organization_id)

    async def _read(self, key: tuple[uuid.UUID, str], query: Callable[[GrantRepository], Awaitable[Any]]) -> Any:
        try:
            return await self._known.get(
                key, lambda: read_database(self.sessionmaker, lambda session: query(GrantRepository(session)))
            )
        except DatabaseDown:
            raise GrantsUnavailable() from None


@dataclass(frozen=True)
class BaseAccess:
    """Which bases a caller may reach and change. Grants bind the platform's token only: with their
    own Airtable token (``grants`` None) a user reaches what Airtable lets that token reach."""

    grants: Grants | None
    organization_id: uuid.UUID | None
    org_role: str | None

    async def check(self, base_id: str, *, write: bool) -> None:
        """403 unless the caller's active organisation is granted the base (``write`` access for a
        change, which an organisation's viewer never makes)."""
        if self.grants is None:
            return
        access = None
        if self.organization_id is not None and base_id != META_BASE:
            access = await self.grants.access(self.organization_id, base_id)
        if access is None:
            raise BaseNotGranted()
        if write and self.org_role == "viewer":
            raise ReadOnlyRole()
        if write and access != "write":
            raise BaseReadOnly()

    async def visible_bases(self) -> Mapping[str, str] | None:
        """The bases a listing may show; None: every base."""
        if self.grants is None:
            return None
        if self.organization_id is None:
            return {}
        return await self.grants.bases(self.organization_id)


UNLIMITED = BaseAccess(None, None, None)


@dataclass(eq=False)
class AirtableService:
    """What one caller may do, with the Airtable token their requests use."""

    upstream: Upstream
    caller: Caller
    allowed_bases: frozenset[str]
    access: BaseAccess = UNLIMITED

    @property
    def settings(self) -> AirtableSettings:
        return self.upstream.settings

    async def _check_base(self, base: str, *, write: bool = False) -> None:
        """Before anything else, the cache included: a request for a base the caller may not
        reach (or change) never gets an answer, cached or not."""
        if self.allowed_bases and base not in self.allowed_bases:
            raise BaseNotAllowed()
        await self.access.check(base, write=write)

    # Bases and tables ---------------------------------------------------------------------

    async def bases(self, offset: str | None = None) -> Cached:
        """The bases the token can see, and of those only the ones the caller's organisation is granted."""
        visible = await self.access.visible_bases()
        if visible is not None and not visible:
            return _fresh_bytes(200, _json.encode({"bases": []}))
        listing = await self._bases_listing(offset)
        return listing if visible is None else _only_bases(listing, visible)

    async def _bases_listing(self, offset: str | None = None) -> Cached:
        query = urlencode([("offset", offset)]) if offset else ""
        request = UpstreamRequest("GET", "/v0/meta/bases", META_BASE, query, retryable=True)

        async def produce() -> Produced:
            document = await self.upstream.checked(self.caller, request)
            if self.allowed_bases:
                document["bases"] = [base for base in document.get("bases", []) if base.get("id") in self.allowed_bases]
            return Produced(200, _json.encode(document))

        return await self.upstream.read(self.caller, request, "schema", f"bases?{query}", produce)

    async def base(self, base_id: str) -> Cached:
        await self._check_base(base_id)
        offset: str | None = None
        for _ in range(MAX_BASE_PAGES):
            listing = await self._bases_listing(offset)
            page = msgspec.json.decode(listing.body)
            for base in page.get("bases", []):
                if base.get("id") == base_id:
                    return _part_of(listing, base)
            offset = page.get("offset")
            if not offset:
                break
        raise NotFound("No such base, or the token cannot see it.", code="base-not-found")

    async def tables(self, base_id: str) -> Cached:
        await self._check_base(base_id)
        request = UpstreamRequest("GET", f"/v0/meta/bases/{_segment(base_id)}/tables", base_id, retryable=True)

        async def produce() -> Produced:
            return Produced(200, _json.encode(await self.upstream.checked(self.caller, request)))

        return await self.upstream.read(self.caller, request, "schema", "tables", produce)

    async def table(self, base_id: str, table: str) -> Cached:
        listing = await self.tables(base_id)
        for candidate in msgspec.json.decode(listing.body).get("tables", []):
            if table in (candidate.get("id"), candidate.get("name")):
                return _part_of(listing, candidate)
        raise NotFound("No such table in this base.", code="table-not-found")

    # Records ------------------------------------------------------------------------------

    async def list_records(self, base_id: str, table: str, query: ListQuery) -> Cached:
        await self._check_base(base_id)
        path = _table_path(base_id, table)
        params = query.airtable_params()
        first = UpstreamRequest("GET", path, base_id, urlencode(params), retryable=True)
        identity = f"list:{table}:{urlencode(params)}:offset={query.offset}:all={query.all}"

        async def produce() -> Produced:
            if query.all:
                return Produced(200, _json.encode(await self._all_pages(path, base_id, query, params)))
            request = _with_offset(first, params, query.offset)
            page = await self.upstream.checked(self.caller, request)
            offset = page.get("offset")
            body = {"records": page.get("records", []), "offset": offset, "hasMore": offset is not None}
            return Produced(200, _json.encode(body))

        return await self.upstream.read(self.caller, first, "records", identity, produce)

    async def _all_pages(
        self, path: str, base_id: str, query: ListQuery, params: list[tuple[str, str]]
    ) -> dict[str, Any]:
        cap = min(query.max_records or self.settings.airtable_max_all_records, self.settings.airtable_max_all_records)
        if query.page_size is None:
            params = [("pageSize", str(PAGE_SIZE)), *params]
        records: list[Any] = []
        offset = query.offset
        while True:
            request = _with_offset(UpstreamRequest("GET", path, base_id, retryable=True), params, offset)
            page = await self.upstream.checked(self.caller, request)
            records.extend(page.get("records", []))
            offset = page.get("offset")
            if not offset or len(records) >= cap:
                break
        if len(records) > cap:
            # Cut at the cap: the next page starts after the last record returned, which Airtable's
            # offsets cannot express, so the caller gets no offset to continue from.
            records, offset = records[:cap], None
        return {"records": records, "offset": offset, "hasMore": offset is not None}

    async def get_record(self, base_id: str, table: str, record_id: str) -> Cached:
        await self._check_base(base_id)
        request = UpstreamRequest(
            "GET", f"{_table_path(base_id, table)}/{_segment(record_id)}", base_id, retryable=True
        )

        async def produce() -> Produced:
            return Produced(200, _json.encode(await self.upstream.checked(self.caller, request)))

        return await self.upstream.read(self.caller, request, "records", f"get:{table}:{record_id}", produce)

    async def create_records(self, base_id: str, table: str, records: list[Fields], typecast: bool) -> BatchResponse:
        await self._check_base(base_id, write=True)
        path = _table_path(base_id, table)

        def request(chunk: list[Fields]) -> UpstreamRequest:
            body = {"records": [{"fields": fields} for fields in chunk], "typecast": typecast}
            return UpstreamRequest("POST", path, base_id, body=_json.encode(body))

        return await self._write_in_chunks(base_id, records, request, created=True)

    async def update_records(
        self, base_id: str, table: str, records: list[tuple[str, Fields]], typecast: bool, replace: bool
    ) -> BatchResponse:
        await self._check_base(base_id, write=True)
        path, method = _table_path(base_id, table), "PUT" if replace else "PATCH"

        def request(chunk: list[tuple[str, Fields]]) -> UpstreamRequest:
            body = {"records": [{"id": id_, "fields": fields} for id_, fields in chunk], "typecast": typecast}
            return UpstreamRequest(method, path, base_id, body=_json.encode(body), retryable=True)

        return await self._write_in_chunks(base_id, records, request)

    async def upsert_records(
        self, base_id: str, table: str, records: list[Fields], merge_on: list[str], typecast: bool
    ) -> BatchResponse:
        await self._check_base(base_id, write=True)
        path = _table_path(base_id, table)

        def request(chunk: list[Fields]) -> UpstreamRequest:
            body = {
                "records": [{"fields": fields} for fields in chunk],
                "performUpsert": {"fieldsToMergeOn": merge_on},
                "typecast": typecast,
            }
            # An upsert may create records: never sent twice blindly.
            return UpstreamRequest("PATCH", path, base_id, body=_json.encode(body))

        return await self._write_in_chunks(base_id, records, request, upsert=True)

    async def update_record(
        self, base_id: str, table: str, record_id: str, fields: Fields, typecast: bool, replace: bool
    ) -> bytes:
        await self._check_base(base_id, write=True)
        body = _json.encode({"fields": fields, "typecast": typecast})
        path = f"{_table_path(base_id, table)}/{_segment(record_id)}"
        request = UpstreamRequest("PUT" if replace else "PATCH", path, base_id, body=body, retryable=True)
        try:
            return _json.encode(await self.upstream.checked(self.caller, request))
        finally:
            await self.upstream.cache.invalidate(base_id)

    async def delete_record(self, base_id: str, table: str, record_id: str) -> bytes:
        await self._check_base(base_id, write=True)
        path = f"{_table_path(base_id, table)}/{_segment(record_id)}"
        request = UpstreamRequest("DELETE", path, base_id, retryable=True)
        try:
            return _json.encode(await self.upstream.checked(self.caller, request))
        finally:
            await self.upstream.cache.invalidate(base_id)

    async def delete_records(self, base_id: str, table: str, record_ids: list[str]) -> DeletedList:
        await self._check_base(base_id, write=True)
        path = _table_path(base_id, table)

        def request(chunk: list[str]) -> UpstreamRequest:
            return UpstreamRequest(
                "DELETE", path, base_id, urlencode([("records[]", id_) for id_ in chunk]), retryable=True
            )

        batch = await self._write_in_chunks(base_id, record_ids, request)
        deleted = [Deleted(id=record.id, deleted=True) for record in batch.records]
        return DeletedList(records=deleted, results=batch.results)

    async def _write_in_chunks(
        self,
        base_id: str,
        items: Sequence[Any],
        request_for: Callable[[Any], UpstreamRequest],
        *,
        created: bool = False,
        upsert: bool = False,
    ) -> BatchResponse:
        """Airtable takes at most 10 records per write: one call per 10, in order. A chunk that
        fails gives its records that error and the next chunks still go, unless Airtable cannot
        be reached (then the rest fail with the same error, unsent)."""
        results: list[RecordResult] = []
        written: list[Record] = []
        created_ids: list[str] = []
        updated_ids: list[str] = []
        stopped: Exception | None = None
        try:
            for start, chunk in _chunks(items, WRITE_CHUNK):
                try:
                    if stopped is not None:
                        raise stopped
                    document = await self.upstream.checked(self.caller, request_for(chunk))
                except (AirtableError, StaleAllowed) as exc:
                    if isinstance(exc, StaleAllowed):
                        stopped = exc
                    results.extend(_failed(start + offset, exc) for offset in range(len(chunk)))
                    continue
                records = [msgspec.convert(item, Record) for item in document.get("records", [])]
                written.extend(records)
                status = 201 if created else 200
                results.extend(
                    RecordResult(index=start + offset, status=status, record=record)
                    for offset, record in enumerate(records)
                )
                created_ids.extend(document.get("createdRecords", []))
                updated_ids.extend(document.get("updatedRecords", []))
        finally:
            await self.upstream.cache.invalidate(base_id)
        if items and not written:
            raise stopped or _error_of(results[0])
        return BatchResponse(
            records=written,
            results=results,
            created_records=created_ids if upsert else None,
            updated_records=updated_ids if upsert else None,
        )

    # The Airtable-compatible mirror ----------------------------------------------------------

    async def mirror(self, method: str, path: str, query: str, body: bytes | None) -> Cached:
        """``/v0/<path>`` sent on as is; reads are cached, writes invalidate their base."""
        segments = path.strip("/").split("/")
        kind: Kind
        if segments[:2] == ["meta", "bases"]:
            base, kind = (segments[2] if len(segments) > 2 else META_BASE), "schema"
        else:
            base, kind = segments[0], "records"
        is_read = method == "GET" or (method == "POST" and segments[-1] == "listRecords")
        if base != META_BASE:
            await self._check_base(base, write=not is_read)
        elif not is_read:
            await self.access.check(base, write=True)  # a change outside any base (a new base): no grant covers it
        upstream_path = "/v0/" + "/".join(_segment(segment) for segment in segments)
        retryable = is_read or (method in RETRYABLE_METHODS and b"performUpsert" not in (body or b""))
        request = UpstreamRequest(method, upstream_path, base, query, body or None, retryable=retryable)
        if is_read and segments == ["meta", "bases"]:
            visible = await self.access.visible_bases()
            if visible is not None and not visible:
                return _fresh_bytes(200, _json.encode({"bases": []}))
            listing = await self._mirror_read(request, kind, segments)
            return listing if visible is None else _only_bases(listing, visible)
        if is_read:
            return await self._mirror_read(request, kind, segments)
        try:
            response = await self.upstream.send(self.caller, request)
        finally:
            await self.upstream.cache.invalidate(base)  # records or schema: both are read again
        if response.status >= 400:
            raise airtable_error(response)
        return _fresh_bytes(response.status, response.body)

    async def _mirror_read(self, request: UpstreamRequest, kind: Kind, segments: list[str]) -> Cached:
        listing_bases = self.allowed_bases and segments == ["meta", "bases"]
        canonical_query = urlencode(sorted(parse_qsl(request.query, keep_blank_values=True)))
        identity = f"v0:{request.method}:{request.path}?{canonical_query}:{_canonical_body(request.body)}"

        async def produce() -> Produced:
            response = await self.upstream.send(self.caller, request)
            if response.status >= 400:
                raise airtable_error(response)
            if not listing_bases:
                return Produced(response.status, response.body)
            document = json_object(response.body)
            document["bases"] = [base for base in document.get("bases", []) if base.get("id") in self.allowed_bases]
            return Produced(response.status, _json.encode(document))

        return await self.upstream.read(self.caller, request, kind, identity, produce)


@dataclass(frozen=True)
class TableRecords:
    """One table's records as one caller may reach them: the routes under
    ``/bases/{base_id}/tables/{table}/records``, their bodies taken as those routes accept them."""

    airtable: AirtableService
    base_id: str
    table: str

    async def listing(self, query: ListQuery) -> Cached:
        return await self.airtable.list_records(self.base_id, self.table, query)

    async def get(self, record_id: str) -> Cached:
        return await self.airtable.get_record(self.base_id, self.table, record_id)

    async def create(self, data: CreateBody) -> BatchResponse:
        if isinstance(data, RecordsCreate):
            records = [item.fields for item in data.records] + ([data.fields] if data.fields is not None else [])
            typecast = data.typecast
        else:
            records, typecast = data, False
        _check_count(len(records))
        return await self.airtable.create_records(self.base_id, self.table, records, typecast)

    async def update(self, data: UpdateBody, *, replace: bool) -> BatchResponse:
        records, typecast = _updates(data)
        return await self.airtable.update_records(self.base_id, self.table, records, typecast, replace=replace)

    async def upsert(self, data: UpsertRequest) -> BatchResponse:
        records = [item.fields for item in data.records]
        return await self.airtable.upsert_records(
            self.base_id, self.table, records, data.fields_to_merge_on, data.typecast
        )

    async def delete(self, record_ids: list[str]) -> DeletedList:
        """``record_ids`` as the query gives them: repeated, comma-separated, or both."""
        ids = [part.strip() for item in record_ids for part in item.split(",") if part.strip()]
        if not ids or len(ids) > MAX_RECORDS_PER_CALL:
            raise Unprocessable(f"Give between 1 and {MAX_RECORDS_PER_CALL} record ids.")
        return await self.airtable.delete_records(self.base_id, self.table, ids)

    async def change(self, record_id: str, data: RecordChange, *, replace: bool) -> bytes:
        """Update the given fields of one record, or with ``replace`` clear the others."""
        return await self.airtable.update_record(
            self.base_id, self.table, record_id, data.fields, data.typecast, replace=replace
        )

    async def remove(self, record_id: str) -> bytes:
        return await self.airtable.delete_record(self.base_id, self.table, record_id)


def _updates(data: UpdateBody) -> tuple[list[tuple[str, Fields]], bool]:
    if isinstance(data, RecordsUpdate):
        _check_count(len(data.records))
        return [(item.id, item.fields) for item in data.records], data.typecast
    updates = []
    for item in data:
        record_id = item.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise Unprocessable("Every record needs an id.")
        updates.append((record_id, {name: value for name, value in item.items() if name != "id"}))
    _check_count(len(updates))
    return updates, False


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_RECORDS_PER_CALL:
        raise Unprocessable(f"Give between 1 and {MAX_RECORDS_PER_CALL} records.")


class GrantManagement:
    """Platform administrators grant organisations bases; an organisation's owners and admins see
    its grants. Every change records an audit event in its transaction."""

    def __init__(self, db: AsyncSession, grants: Grants, actor: Identity, ip: str) -> None:
        self.db = db
        self.grants = grants
        self.actor = actor
        self.ip = ip
        self.repository = GrantRepository(db)

    async def put(self, organization_id: uuid.UUID, base_id: str, access: str) -> tuple[Grant, bool]:
        """Grants the base, or changes the access granted; True when the grant is new."""
        row = await self.repository.get(organization_id, base_id)
        created = row is None
        if row is None:
            now = utcnow()
            row = await self.repository.add(
                BaseGrant(
                    organization_id=organization_id,
                    base_id=base_id,
                    access=access,
                    created_by=self.actor.user_id,
                    created_at=now,
                    updated_at=now,
                )
            )
            await self._audit("grant.created", row, {"base_id": base_id, "access": access})
        elif row.access != access:
            previous, row.access, row.updated_at = row.access, access, utcnow()
            await self.db.flush()
            await self._audit("grant.changed", row, {"base_id": base_id, "from": previous, "to": access})
        self.grants.forget(organization_id)
        return _grant(row), created

    async def revoke(self, organization_id: uuid.UUID, base_id: str) -> None:
        row = await self.repository.get(organization_id, base_id)
        if row is None:
            raise GrantNotFound()
        await self.repository.delete(row)
        await self._audit("grant.revoked", row, {"base_id": base_id, "access": row.access})
        self.grants.forget(organization_id)

    async def listing(self, organization_id: uuid.UUID | None) -> GrantList:
        """Platform administrators: any organisation's grants (all without one); an organisation's
        owners and admins: their active organisation's; anyone else: 403."""
        if not self.actor.is_admin:
            own = self.actor.tenant_id
            if own is None or self.actor.org_role not in ORG_MANAGERS or organization_id not in (None, own):
                raise GrantsNotVisible()
            organization_id = own
        return GrantList(grants=[_grant(row) for row in await self.repository.listing(organization_id)])

    async def _audit(self, action: str, row: BaseGrant, details: dict[str, str]) -> None:
        await record_audit(
            self.db,
            outbox,
            "airtable",
            action,
            actor_id=self.actor.user_id,
            organization_id=row.organization_id,
            target_type="base",
            target_id=row.base_id,
            ip=self.ip,
            details=details,
        )


async def drop_organization_grants(session: AsyncSession, grants: Grants, organization_id: uuid.UUID) -> int:
    """The organisation was deleted (auth's ``organization.deleted``): its grants go with it."""
    dropped = await GrantRepository(session).delete_organization(organization_id)
    grants.forget(organization_id)
    return dropped


def _grant(row: BaseGrant) -> Grant:
    return msgspec.convert(row, Grant, from_attributes=True)


@dataclass(eq=False)
class UserTokens:
    """Users' own Airtable tokens: stored encrypted, looked up on every request through a short
    per-process cache (a change made on another replica is seen within ``token_cache_seconds``).

    While the database cannot be read, a user's last known token serves on; failing that, the
    shared store remembers whether the user has a token of their own (and its identity, never the
    token), so their cached reads still answer and, without one, so do their uncached reads."""

    sessionmaker: async_sessionmaker[AsyncSession]
    cipher: UserSecretCipher | None
    platform_token: str
    cache_seconds: float
    store: KeyValueStore
    lookup_seconds: float

    def __post_init__(self) -> None:
        # user -> their own token (None: they have none)
        self._known: LastKnown[uuid.UUID, str | None] = LastKnown(
            self.cache_seconds, "users' last known tokens serve", self.lookup_seconds
        )

    async def caller(self, user_id: uuid.UUID, share: str) -> Caller:
        """The user's requests' Caller: their own token, else the platform's."""
        try:
            own = await self._own_token(user_id)
        except DatabaseDown:
            own_identity = await self._remembered_identity(user_id)
            if own_identity == UNREADABLE_TOKEN:
                raise StoredTokenUnreadable() from None
            if own_identity:
                return Caller(share, own_identity, None, own_token=True)
            own = None
        if own == UNREADABLE_TOKEN:
            raise StoredTokenUnreadable()
        token = own or self.platform_token
        if not token:
            raise AirtableNotConfigured()
        return Caller(share, token_identity(token), token, own_token=bool(own))

    async def _own_token(self, user_id: uuid.UUID) -> str | None:
        cipher = self.cipher
        if cipher is None:
            return None
        return await self._known.get(user_id, lambda: self._read_own_token(cipher, user_id))

    async def _read_own_token(self, cipher: UserSecretCipher, user_id: uuid.UUID) -> str | None:
        row = await read_database(self.sessionmaker, lambda session: UserTokenRepository(session).get(user_id))
        own = cipher.decrypt(user_id, row.ciphertext) if row is not None else None
        if row is not None and own is None:
            logger.warning("a stored Airtable token does not decrypt (another key?)", extra={"user_id": str(user_id)})
            own = UNREADABLE_TOKEN
        if not self._known.knows(user_id, own):
            await self._remember_identity(user_id, own)
        return own

    async def _remember_identity(self, user_id: uuid.UUID, own: str | None) -> None:
        """Whether the user has a token of their own, and its identity, for when the database is down."""
        # Only needed during a database outage; a failure here is repaired by the next load.
        with contextlib.suppress(RedisError):
            remembered = UNREADABLE_TOKEN if own == UNREADABLE_TOKEN else token_identity(own) if own else NO_OWN_TOKEN
            await self.store.set(_identity_key(user_id), remembered, IDENTITY_TTL)

    async def _remembered_identity(self, user_id: uuid.UUID) -> str | None:
        """The identity of the user's own token, None when they have none; StoredTokenUnavailable
        when nobody knows."""
        try:
            value = await self.store.get(_identity_key(user_id))
        except RedisError:
            value = None
        if value is None:
            raise StoredTokenUnavailable()
        return None if value == NO_OWN_TOKEN.encode() else value.decode()

    async def status(self, session: AsyncSession, user_id: uuid.UUID) -> TokenStatus:
        row = await UserTokenRepository(session).get(user_id)
        if row is None:
            return TokenStatus(configured=False)
        return TokenStatus(configured=True, hint=row.hint, updated_at=row.updated_at)

    async def save(self, session: AsyncSession, user_id: uuid.UUID, token: str) -> TokenStatus:
        if self.cipher is None:
            raise UserTokensDisabled()
        row = await UserTokenRepository(session).save(user_id, self.cipher.encrypt(user_id, token), token[-4:])
        self._known.forget(user_id)
        await self._remember_identity(user_id, token)
        return TokenStatus(configured=True, hint=row.hint, updated_at=row.updated_at)

    async def delete(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        deleted = await UserTokenRepository(session).delete(user_id)
        self._known.forget(user_id)
        await self._remember_identity(user_id, None)
        return deleted


def _identity_key(user_id: uuid.UUID) -> str:
    return f"airtable:token-of:{user_id}"


def _segment(value: str) -> str:
    """One path segment for Airtable, every reserved character encoded; an empty or dot segment
    (which a URL would collapse, escaping the base it was checked for) is refused."""
    if value in ("", ".", ".."):
        raise NotFound("No such resource.")
    return quote(value, safe="")


def _table_path(base_id: str, table: str) -> str:
    return f"/v0/{_segment(base_id)}/{_segment(table)}"


def _with_offset(request: UpstreamRequest, params: list[tuple[str, str]], offset: str | None) -> UpstreamRequest:
    query = urlencode([*params, ("offset", offset)] if offset else params)
    return msgspec.structs.replace(request, query=query)


def _canonical_body(body: bytes | None) -> str:
    if not body:
        return ""
    try:
        return _json.encode(msgspec.json.decode(body)).decode() if body else ""
    except msgspec.DecodeError:
        return body.decode("latin-1")


def _chunks(items: Sequence[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    for start in range(0, len(items), size):
        yield start, list(items[start : start + size])


def _failed(index: int, exc: Exception) -> RecordResult:
    status = getattr(exc, "status_code", 502)
    if isinstance(exc, AirtableError):
        error = ErrorDetail(type=exc.airtable_error.type, message=exc.airtable_error.message)
    else:
        error = ErrorDetail(type=getattr(exc, "code", "UPSTREAM_ERROR"), message=getattr(exc, "detail", None))
    return RecordResult(index=index, status=status, error=error)


def _error_of(result: RecordResult) -> AirtableError:
    error = result.error or ErrorDetail(type="UPSTREAM_ERROR")
    return AirtableError(result.status, error.type, error.message)


def _part_of(listing: Cached, document: Any) -> Cached:
    """One item of a cached listing, answered as the listing was (HIT, MISS or STALE)."""
    body = _json.encode(document)
    return Cached(status=200, body=body, etag=etag_of(body), state=listing.state, age=listing.age)


def _only_bases(listing: Cached, visible: Mapping[str, str]) -> Cached:
    """A cached listing of bases cut to those ``visible`` (after the cache, which holds the
    token's whole listing: each organisation sees its own part of it)."""
    document = json_object(listing.body)
    document["bases"] = [base for base in document.get("bases", []) if base.get("id") in visible]
    body = _json.encode(document)
    return Cached(status=listing.status, body=body, etag=etag_of(body), state=listing.state, age=listing.age)


def _fresh_bytes(status: int, body: bytes) -> Cached:
    return Cached(status=status, body=body, etag=etag_of(body), state="MISS")
