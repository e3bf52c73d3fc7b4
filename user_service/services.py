"""Profile business logic: no Litestar imports, time from an injected clock."""

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.controllers import page_count
from shared.db import DirectStatements
from shared.events import Event, new_event
from shared.outbox import add_event
from shared.security import ORG_MANAGERS, ORG_ROLES, Identity
from user_service.errors import OrganizationManagersOnly, OrganizationNotFound, ProfileNotFound
from user_service.models import Profile, outbox
from user_service.repositories import MembershipRepository, ProfileRepository
from user_service.schemas import MemberList, ProfileList, ProfileQuery, member_read, profile_read

logger = logging.getLogger("user_service")
Clock = Callable[[], datetime]
SETTABLE_FIELDS = ("first_name", "last_name", "display_name", "avatar_url", "bio", "phone", "timezone", "locale")


def primary_role(roles: object) -> str:
    """The profile keeps one role, the strongest of the account's."""
    return "admin" if isinstance(roles, list | tuple) and "admin" in roles else "user"


class OwnProfile:
    """``GET /users/me`` for one caller without a request session: the committed profile, read by
    DirectStatements; only when it does not exist yet (``user.registered`` still on its way) does a
    session of its own create it, as ``ProfileService.me`` does."""

    def __init__(
        self, identity: Identity, direct: DirectStatements, sessionmaker: async_sessionmaker[AsyncSession], clock: Clock
    ) -> None:
        self.identity = identity
        self.direct = direct
        self.sessionmaker = sessionmaker
        self.clock = clock

    async def read(self) -> Profile:
        profile = await ProfileRepository.committed_direct(self.direct, self.identity.user_id)
        if profile is None:
            async with self.sessionmaker() as session, session.begin():
                return await ProfileService(session, self.clock, self.direct).me(self.identity)
        if profile.deleted_at is not None:  # answered without a session, however often it is asked
            raise ProfileNotFound()
        return profile


class ProfileService:
    def __init__(self, db: AsyncSession, clock: Clock, direct: DirectStatements | None = None) -> None:
        self.db = db
        self.profiles = ProfileRepository(db, direct)
        self.clock = clock

    # -- the caller's own profile ------------------------------------------------------------

    async def me(self, identity: Identity) -> Profile:
        """The caller's profile to show (``GET /users/me``, the hottest read): as committed, read
        outside the session when it exists (not to be changed: ``writable`` loads it to change)."""
        return await self._own(identity, self.profiles.committed)

    async def _own(self, identity: Identity, read: Callable[[uuid.UUID], Awaitable[Profile | None]]) -> Profile:
        """The caller's profile, created from the token's claims if ``user.registered`` has not
        been applied yet: a valid user never gets a 404 for themself."""
        profile = await read(identity.user_id)
        if profile is None:
            now = self.clock()
            await self.profiles.add_if_absent(
                {
                    "id": identity.user_id,
                    "email": identity.email,
                    "preferences": {},
                    "tenant_id": identity.tenant_id,
                    "role": primary_role(list(identity.roles)),
                    "is_active": True,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            profile = await self.profiles.by_id(identity.user_id)
            logger.info("profile created from the token's claims", extra={"user_id": str(identity.user_id)})
        if profile is None or profile.deleted_at is not None:
            raise ProfileNotFound()
        return profile

    # -- any profile, subject to who is asking -------------------------------------------------

    async def visible(self, identity: Identity, user_id: uuid.UUID) -> tuple[Profile, bool]:
        """The profile and whether the caller may see all of it (themself or a platform admin) or
        only its public fields (an owner or admin of the caller's active organisation, of which
        the profile's user is a member). Anything else is a 404, as for a missing profile."""
        if user_id == identity.user_id:
            return await self._own(identity, self.profiles.by_id), True
        profile = await self.profiles.by_id(user_id)
        if profile is None or profile.deleted_at is not None:
            raise ProfileNotFound()
        if identity.is_admin:
            return profile, True
        organization = identity.tenant_id
        if (
            organization is not None
            and identity.has_org_role(organization, *ORG_MANAGERS)
            and await MembershipRepository(self.db).is_member(organization, user_id)
        ):
            return profile, False
        raise ProfileNotFound()

    async def writable(self, identity: Identity, user_id: uuid.UUID) -> Profile:
        if user_id == identity.user_id:
            return await self._own(identity, self.profiles.by_id)
        if not identity.is_admin:
            raise ProfileNotFound()
        profile = await self.profiles.by_id(user_id)
        if profile is None or profile.deleted_at is not None:
            raise ProfileNotFound()
        return profile

    async def replace(self, identity: Identity, user_id: uuid.UUID, values: dict[str, Any]) -> Profile:
        profile = await self.writable(identity, user_id)
        for name in SETTABLE_FIELDS:
            setattr(profile, name, values.get(name))
        profile.preferences = values.get("preferences") or {}
        profile.updated_at = self.clock()
        await self.db.flush()
        return profile

    async def update(self, identity: Identity, user_id: uuid.UUID, changes: dict[str, Any]) -> Profile:
        profile = await self.writable(identity, user_id)
        for name, value in changes.items():
            setattr(profile, name, value)
        profile.updated_at = self.clock()
        await self.db.flush()
        return profile

    async def delete(self, identity: Identity, user_id: uuid.UUID) -> None:
        """Soft-delete; ``user.deleted`` (same transaction) makes auth close the account."""
        profile = await self.writable(identity, user_id)
        now = self.clock()
        profile.deleted_at = now
        profile.is_active = False
        profile.updated_at = now
        data = {
            "user_id": str(profile.id),
            "tenant_id": str(profile.tenant_id) if profile.tenant_id else None,
            "deleted_by": str(identity.user_id),
            "deleted_at": now.isoformat(),
        }
        await add_event(self.db, outbox, new_event("user.deleted", "users", data))
        logger.info("profile deleted", extra={"user_id": str(profile.id), "by": str(identity.user_id)})

    # -- administration --------------------------------------------------------------------------

    async def list(self, query: ProfileQuery) -> ProfileList:
        profiles, total = await self.profiles.search(query)
        return ProfileList(
            users=[profile_read(p) for p in profiles],
            total=total,
            page=query.page,
            page_size=query.page_size,
            total_pages=page_count(total, query.page_size),
        )

    async def purge(self, before: datetime) -> int:
        return await self.profiles.purge_deleted(before)

    # -- events from the auth service --------------------------------------------------------

    async def apply_account_event(self, event: Event) -> None:
        """``user.registered`` / ``.email_verified`` / ``.email_changed`` / ``.logged_in`` / ``.account_changed``: each
        carries the account as it was; the profile copies it unless a newer one was applied."""
        data = event.data
        user_id = uuid.UUID(str(data["user_id"]))
        account = {
            "email": data["email"],
            "tenant_id": uuid.UUID(str(data["tenant_id"])) if data.get("tenant_id") else None,
            "role": primary_role(data.get("roles")),
            "is_active": bool(data.get("is_active", True)),
            "email_verified": bool(data.get("email_verified", False)),
            "last_login_at": _datetime(data.get("last_login_at")),
            "account_synced_at": event.occurred_at,
        }
        created = _datetime(data.get("created_at")) or event.occurred_at
        inserted = await self.profiles.add_if_absent(
            {
                "id": user_id,
                "first_name": data.get("first_name"),
                "last_name": data.get("last_name"),
                "preferences": {},
                "created_at": created,
                "updated_at": self.clock(),
                **account,
            }
        )
        if inserted:
            logger.info("profile created", extra={"user_id": str(user_id), "event_type": event.type})
            return
        profile = await self.profiles.by_id(user_id, for_update=True)
        if profile is None or profile.deleted_at is not None:
            return  # deleted (or purged) meanwhile: a late event does not bring it back
        if profile.account_synced_at is not None and profile.account_synced_at >= event.occurred_at:
            return  # an older event arriving late
        if profile.account_synced_at is None:  # created from the token's claims: take the rest too
            profile.first_name = profile.first_name or data.get("first_name")
            profile.last_name = profile.last_name or data.get("last_name")
            profile.created_at = created
        for name, value in account.items():
            setattr(profile, name, value)
        profile.updated_at = self.clock()


class MembershipService:
    """Organisations' members, a copy of auth's memberships (``organization.*`` events)."""

    def __init__(self, db: AsyncSession) -> None:
        self.db = db
        self.memberships = MembershipRepository(db)

    async def members(self, identity: Identity, organization_id: uuid.UUID, page: int, page_size: int) -> MemberList:
        """For the organisation's owners and admins (it must be their active organisation) and
        platform admins; its other members get a 403, anyone else a 404 (its existence stays unknown)."""
        if not identity.is_admin and not identity.has_org_role(organization_id, *ORG_MANAGERS):
            if identity.tenant_id == organization_id:
                raise OrganizationManagersOnly()
            raise OrganizationNotFound()
        rows, total = await self.memberships.members(organization_id, page, page_size)
        return MemberList(
            members=[member_read(membership, profile) for membership, profile in rows],
            total=total,
            page=page,
            page_size=page_size,
            total_pages=page_count(total, page_size),
        )

    async def apply_event(self, event: Event) -> None:
        """``organization.member_added`` / ``member_changed`` / ``member_removed`` / ``deleted``.
        Each membership follows the latest event about it (by ``occurred_at``): one arriving late
        changes nothing."""
        organization_id = uuid.UUID(str(event.data["organization_id"]))
        if event.type == "organization.deleted":
            removed = await self.memberships.delete_organization(organization_id)
            logger.info(
                "organisation's memberships removed", extra={"organization_id": str(organization_id), "count": removed}
            )
            return
        user_id = uuid.UUID(str(event.data["user_id"]))
        removal = event.type == "organization.member_removed"
        role = "member" if removal else str(event.data["role"])
        if role not in ORG_ROLES:
            raise ValueError(f"unknown organisation role {role!r}")
        at = event.occurred_at
        values = {"role": role, "synced_at": at, "removed_at": at if removal else None}
        if await self.memberships.add_if_absent(
            {"organization_id": organization_id, "user_id": user_id, "joined_at": at, **values}
        ):
            return
        membership = await self.memberships.get(organization_id, user_id)
        if membership is None or (membership.synced_at is not None and membership.synced_at >= at):
            return  # an older event arriving late
        if removal:
            membership.removed_at, membership.synced_at = at, at
            return
        if membership.removed_at is not None:  # joined again
            membership.joined_at = at
        membership.role, membership.removed_at, membership.synced_at = role, None, at


def _datetime(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None
