"""API keys: personal keys (``pat_``) of a user and service keys (``psk_``) of the platform.

A key reads ``<kind>_<id>_<secret>``: the id (the row's UUID in hex) finds the row without a scan,
the secret (256 random bits) is shown once and stored only as an HMAC-SHA256 under
``API_KEY_PEPPER`` (a fast keyed hash suits a high-entropy secret; compared in constant time).

The gateway exchanges a key for a short-lived access token (``POST /internal/api-keys/introspect``,
a route the gateway never proxies) carrying ``sub``, ``scopes`` and ``key_id``, and forwards that
token: the services keep verifying tokens themselves. The token's ``sid`` is the key's id, so a
revoked key's tokens are refused through the revocation list every gateway and service reads.
The deployment's legacy ``API_KEY`` is exchanged the same way, for a token of the deployment.
"""

import hashlib
import hmac
import secrets
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import jwt
import msgspec
from litestar import Controller, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from msgspec import Meta, Struct
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.config import AuthSettings
from auth_service.memberships import Memberships
from auth_service.models import ApiKey, User, outbox
from auth_service.services import Client
from auth_service.tokens import OrgClaim, TokenIssuer, org_claims
from shared.audit import record_audit
from shared.controllers import BEARER, CALLER, Caller
from shared.errors import Forbidden, NotFound, Unauthorized, Unprocessable
from shared.http import check_date_time
from shared.security import Identity, RevocationList, require_admin
from shared.settings import dev_secret_file

PERSONAL, SERVICE = "pat", "psk"
KINDS = {PERSONAL: "personal", SERVICE: "service"}
SCOPES = ("users:read", "users:write", "analytics:read", "analytics:write", "airtable:read", "airtable:write")
Scope = Literal["users:read", "users:write", "analytics:read", "analytics:write", "airtable:read", "airtable:write"]
# The deployment's legacy API_KEY acts as this principal, for the older platform's analytics routes.
DEPLOYMENT_PRINCIPAL = uuid.uuid5(uuid.NAMESPACE_URL, "pyairtable:deployment-api-key")
DEPLOYMENT_SCOPES = ["analytics:read", "analytics:write"]
MAX_KEYS_PER_OWNER = 100
SERVICE_KEY_ORG_ROLE = "member"


class InvalidApiKey(Unauthorized):
    code = "invalid-api-key"

    def __init__(self) -> None:
        super().__init__("The API key is invalid, expired or revoked.", headers={"WWW-Authenticate": "ApiKey"})


class ApiKeyNotFound(NotFound):
    code = "api-key-not-found"

    def __init__(self) -> None:
        super().__init__("No such API key.")


class ApiKeyCreate(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=len(SCOPES))]
    expires_at: Annotated[datetime, Meta(tz=True)] | None = None

    def __post_init__(self) -> None:
        check_date_time(self.expires_at, "expires_at")


class ApiKeyRead(Struct):
    id: uuid.UUID
    kind: Literal["personal", "service"]
    name: str
    prefix: str  # what the key starts with: enough to recognise it, never enough to use it
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str  # the whole key: shown in this answer only


class ApiKeyList(Struct):
    keys: list[ApiKeyRead]


class IntrospectRequest(Struct, forbid_unknown_fields=True):
    key: Annotated[str, Meta(max_length=200)]


class KeyToken(Struct):
    """What the gateway forwards for a valid key, and for how long it may keep it."""

    access_token: str
    expires_in: int
    key_id: str
    sub: str
    scopes: list[str]


def key_prefix(row: ApiKey) -> str:
    return f"{_kind_prefix(row.kind)}_{row.id.hex}"


def _kind_prefix(kind: str) -> str:
    return PERSONAL if kind == KINDS[PERSONAL] else SERVICE


def key_read(row: ApiKey) -> ApiKeyRead:
    return ApiKeyRead(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]  # one of KINDS' values, by construction
        name=row.name,
        prefix=key_prefix(row),
        scopes=list(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
    )


class KeySecrets(Struct, frozen=True):
    """What keys are checked against, read once at start-up (outside production, from DATA_DIR)."""

    pepper: bytes  # the HMAC key of the secrets' hashes
    deployment_key: bytes  # the deployment's legacy API_KEY; empty: none

    @classmethod
    def load(cls, settings: AuthSettings) -> "KeySecrets":
        # Without API_KEY_PEPPER, production hashes under a fixed label (a 256-bit secret is out of reach
        # of guessing either way); elsewhere a pepper is kept in DATA_DIR.
        pepper = settings.api_key_pepper or (
            "pyairtable-api-keys" if settings.is_production else dev_secret_file(settings, "api_key_pepper")
        )
        deployment_key = settings.api_key
        if not deployment_key and settings.require_api_key and not settings.is_production:
            deployment_key = dev_secret_file(settings, "api_key")  # the gateway's own, in development
        return cls(pepper=pepper.encode(), deployment_key=deployment_key.encode())


class ApiKeyService:
    def __init__(
        self,
        db: AsyncSession,
        settings: AuthSettings,
        issuer: TokenIssuer,
        revocations: RevocationList,
        clock: Any,
        key_secrets: KeySecrets,
        client_ip: str | None = None,
    ) -> None:
        self.db = db
        self.client_ip = client_ip  # what audit entries say the request came from
        self.settings = settings
        self.issuer = issuer
        self.revocations = revocations
        self.clock = clock
        self.pepper = key_secrets.pepper
        self.deployment_key = key_secrets.deployment_key

    def secret_hash(self, secret: str) -> str:
        return hmac.new(self.pepper, secret.encode(), hashlib.sha256).hexdigest()

    async def create(
        self,
        kind: str,
        owner_id: uuid.UUID | None,
        creator: Identity,
        data: ApiKeyCreate,
        organization_id: uuid.UUID | None = None,
    ) -> ApiKeyCreated:
        """A new key. ``organization_id``: the organisation owning a service key (None: a
        platform-wide one); a personal key acts in the organisation active in ``creator``'s token."""
        now = self.clock()
        if data.expires_at is not None and data.expires_at <= now:
            raise Unprocessable("expires_at: must be in the future", code="invalid-expiry")
        if len(await self._listed(kind, owner_id, organization_id)) >= MAX_KEYS_PER_OWNER:
            raise Unprocessable(f"At most {MAX_KEYS_PER_OWNER} keys: revoke one first.", code="too-many-keys")
        secret = secrets.token_urlsafe(32)
        row = ApiKey(
            id=uuid.uuid4(),
            kind=kind,
            owner_id=owner_id,
            name=data.name,
            secret_hash=self.secret_hash(secret),
            scopes=sorted(set(data.scopes)),
            created_by=creator.user_id,
            created_at=now,
            expires_at=data.expires_at,
            # A personal key acts in the organisation active when it was made (its owner's role
            # there is read at each exchange); a service key's organisation is its owner.
            organization_id=creator.tenant_id if kind == KINDS[PERSONAL] else organization_id,
        )
        self.db.add(row)
        await self.db.flush()
        await self._audit("api_key.created", creator, row)
        return ApiKeyCreated(**msgspec.structs.asdict(key_read(row)), key=f"{key_prefix(row)}_{secret}")

    async def listing(
        self, kind: str, owner_id: uuid.UUID | None, organization_id: uuid.UUID | None = None
    ) -> ApiKeyList:
        return ApiKeyList(keys=[key_read(row) for row in await self._listed(kind, owner_id, organization_id)])

    async def revoke(
        self,
        kind: str,
        owner_id: uuid.UUID | None,
        key_id: uuid.UUID,
        revoker: Identity,
        organization_id: uuid.UUID | None = None,
    ) -> None:
        """The key stops working: at once at the auth service, within seconds at every gateway
        (its tokens' session is revoked, and gateways re-check keys every few seconds)."""
        row = await self.db.get(ApiKey, key_id)
        if row is None or row.kind != kind or row.owner_id != owner_id or row.revoked_at is not None:
            raise ApiKeyNotFound()
        if kind == KINDS[SERVICE] and row.organization_id != organization_id:
            raise ApiKeyNotFound()
        row.revoked_at = self.clock()
        await self.db.flush()
        await self._audit("api_key.revoked", revoker, row)
        await self.revocations.revoke_session(str(row.id), self.settings.api_key_token_ttl + 60)

    async def _audit(self, action: str, actor: Identity, row: ApiKey) -> None:
        """Which key, of what kind and scopes: never its secret, its prefix or its name (user text).
        A personal key is in its owner's active organisation; a service key in the organisation that
        owns it (none for a platform-wide one)."""
        await record_audit(
            self.db,
            outbox,
            "auth",
            action,
            actor_id=actor.user_id,
            organization_id=actor.tenant_id if row.kind == KINDS[PERSONAL] else row.organization_id,
            target_type="api_key",
            target_id=row.id,
            ip=self.client_ip,
            details={"kind": row.kind, "scopes": list(row.scopes)},
        )

    async def _listed(
        self, kind: str, owner_id: uuid.UUID | None, organization_id: uuid.UUID | None = None
    ) -> list[ApiKey]:
        query = select(ApiKey).where(ApiKey.kind == kind, ApiKey.revoked_at.is_(None))
        query = query.where(ApiKey.owner_id == owner_id if owner_id is not None else ApiKey.owner_id.is_(None))
        if kind == KINDS[SERVICE]:  # an organisation's service keys, or the platform-wide ones
            query = query.where(
                ApiKey.organization_id == organization_id
                if organization_id is not None
                else ApiKey.organization_id.is_(None)
            )
        return list((await self.db.scalars(query.order_by(ApiKey.created_at))).all())

    async def introspect(self, key: str) -> KeyToken:
        """An access token for a valid key; InvalidApiKey otherwise (the same for every reason)."""
        if self._is_deployment_key(key):
            return self._token(DEPLOYMENT_PRINCIPAL, "deployment", DEPLOYMENT_SCOPES, ["service"], "")
        row = await self._valid_row(key)
        if row is None:
            raise InvalidApiKey()
        row.last_used_at = self.clock()
        if row.kind == KINDS[SERVICE]:
            # An organisation's service key acts in it as a member: its scopes bound what it does.
            organization = (row.organization_id, SERVICE_KEY_ORG_ROLE) if row.organization_id else None
            return self._token(row.id, str(row.id), row.scopes, ["service"], "", organization)
        owner = await self.db.get(User, row.owner_id)
        if owner is None or not owner.is_active:
            raise InvalidApiKey()
        role = await Memberships(self.db).role(row.organization_id, owner.id)
        organization = (row.organization_id, role) if row.organization_id and role else None
        return self._token(owner.id, str(row.id), row.scopes, ["user"], owner.email, organization)

    def _is_deployment_key(self, key: str) -> bool:
        return bool(self.deployment_key) and hmac.compare_digest(key.encode(), self.deployment_key)

    async def _valid_row(self, key: str) -> ApiKey | None:
        kind, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if kind not in KINDS or len(key_id) != 32 or not secret:
            return None
        try:
            row = await self.db.get(ApiKey, uuid.UUID(hex=key_id))
        except ValueError:
            return None
        if row is None or row.kind != KINDS[kind]:
            return None
        if not hmac.compare_digest(self.secret_hash(secret), row.secret_hash):
            return None
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= self.clock()):
            return None
        return row

    def _token(
        self,
        subject: uuid.UUID,
        key_id: str,
        scopes: list[str],
        roles: list[str],
        email: str,
        organization: OrgClaim | None = None,
    ) -> KeyToken:
        ttl = self.settings.api_key_token_ttl
        claims: dict[str, Any] = {
            "sub": str(subject),
            "email": email,
            "roles": roles,
            "sid": key_id,
            "key_id": key_id,
            "scopes": list(scopes),
        }
        claims.update(org_claims(organization))
        token = self.issuer.sign(claims, self.clock(), ttl)
        return KeyToken(access_token=token, expires_in=ttl, key_id=key_id, sub=str(subject), scopes=list(scopes))


def provide_api_keys(
    db_session: NamedDependency[AsyncSession], state: State, client: NamedDependency[Client]
) -> ApiKeyService:
    return ApiKeyService(
        db_session, state.settings, state.issuer, state.revocations, state.clock, state.key_secrets, client.ip
    )


# The caller too: every key route but the gateway's introspection is a signed-in user's.
KEY_DEPENDENCIES = {"api_keys": Provide(provide_api_keys, sync_to_thread=False), **CALLER}
# A handler's ``api_keys: ApiKeys``: the key service of the request.
ApiKeys = NamedDependency[ApiKeyService]


def refuse_key_tokens(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A key's token (it carries ``key_id``) never manages keys: a leaked key cannot make another.
    The gateway already keeps keys out of ``/api/v1/auth``; this holds behind it too."""
    token = connection.scope.get("auth")
    if isinstance(token, str) and "key_id" in jwt.decode(token, options={"verify_signature": False}):
        raise Forbidden("API keys are managed with a signed-in user's token, not with a key.", code="key-token")


class UserTokenController(Controller):
    """What the routes of a signed-in user's own token share: a bearer access token, never a key's."""

    security = BEARER
    guards = [refuse_key_tokens]


class PersonalKeyController(UserTokenController):
    """The signed-in user's own API keys."""

    path = "/api/v1/auth/api-keys"
    tags = ["auth", "api-keys"]
    dependencies = KEY_DEPENDENCIES

    @post("/", operation_id="create_api_key", status_code=HTTP_201_CREATED)
    async def create(self, data: JSONBody[ApiKeyCreate], caller: Caller, api_keys: ApiKeys) -> ApiKeyCreated:
        """A new key with these scopes (and expiry): its secret is in this answer and nowhere else."""
        return await api_keys.create(KINDS[PERSONAL], caller.user_id, caller, data)

    @get("/", operation_id="list_api_keys")
    async def list_keys(self, caller: Caller, api_keys: ApiKeys) -> ApiKeyList:
        """The caller's keys that are not revoked, by prefix, with when each was last used."""
        return await api_keys.listing(KINDS[PERSONAL], caller.user_id)

    @delete("/{key_id:uuid}", operation_id="revoke_api_key", raises=[ApiKeyNotFound])
    async def revoke(self, key_id: FromPath[uuid.UUID], caller: Caller, api_keys: ApiKeys) -> None:
        """Revoke one of the caller's keys (every gateway refuses it within 5 s)."""
        await api_keys.revoke(KINDS[PERSONAL], caller.user_id, key_id, caller)


class ServiceKeyController(Controller):
    """Keys of backends, owned by the platform and managed by administrators."""

    path = "/api/v1/auth/service-keys"
    tags = ["auth", "api-keys", "admin"]
    security = BEARER
    guards = [require_admin, refuse_key_tokens]
    dependencies = KEY_DEPENDENCIES

    @post("/", operation_id="create_service_key", status_code=HTTP_201_CREATED)
    async def create(self, data: JSONBody[ApiKeyCreate], caller: Caller, api_keys: ApiKeys) -> ApiKeyCreated:
        """A new service key: its secret is in this answer and nowhere else."""
        return await api_keys.create(KINDS[SERVICE], None, caller, data)

    @get("/", operation_id="list_service_keys")
    async def list_keys(self, api_keys: ApiKeys) -> ApiKeyList:
        """The platform's service keys that are not revoked."""
        return await api_keys.listing(KINDS[SERVICE], None)

    @delete("/{key_id:uuid}", operation_id="revoke_service_key", raises=[ApiKeyNotFound])
    async def revoke(self, key_id: FromPath[uuid.UUID], caller: Caller, api_keys: ApiKeys) -> None:
        """Revoke a service key (every gateway refuses it within 5 s)."""
        await api_keys.revoke(KINDS[SERVICE], None, key_id, caller)


class KeyIntrospectionController(Controller):
    """For the gateway only (it never proxies ``/api/v1/auth/internal``): a key for a token."""

    path = "/api/v1/auth/internal/api-keys"
    tags = ["internal"]

    @post(
        "/introspect",
        operation_id="introspect_api_key",
        status_code=HTTP_200_OK,
        opt={"exclude_from_auth": True},
        raises=[InvalidApiKey],
        include_in_schema=False,
    )
    async def introspect(self, data: JSONBody[IntrospectRequest], api_keys: ApiKeys) -> KeyToken:
        """A short-lived access token for a valid key (401 ``invalid-api-key`` otherwise)."""
        return await api_keys.introspect(data.key)

    dependencies = KEY_DEPENDENCIES
