"""Profile business logic: no Litestar imports, time from an injected clock."""

import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import Event, new_event
from shared.outbox import add_event
from shared.security import Identity
from user_service.errors import ProfileNotFound
from user_service.models import Profile, outbox
from user_service.repositories import ProfileRepository
from user_service.schemas import ProfileList, ProfileQuery, profile_read

logger = logging.getLogger("user_service")
Clock = Callable[[], datetime]
SETTABLE_FIELDS = ("first_name", "last_name", "display_name", "avatar_url", "bio", "phone", "timezone", "locale")


def primary_role(roles: object) -> str:
    """The profile keeps one role, the strongest of the account's."""
    return "admin" if isinstance(roles, list | tuple) and "admin" in roles else "user"


class ProfileService:
    def __init__(self, db: AsyncSession, clock: Clock) -> None:
        self.db = db
        self.profiles = ProfileRepository(db)
        self.clock = clock

    # -- the caller's own profile ------------------------------------------------------------

    async def me(self, identity: Identity) -> Profile:
        """The caller's profile, created from the token's claims if ``user.registered`` has not
        been applied yet: a valid user never gets a 404 for themself."""
        profile = await self.profiles.by_id(identity.user_id)
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
        """The profile and whether the caller may see all of it (themself or an admin) or only
        its public fields (same tenant). Anything else is a 404, as for a missing profile."""
        if user_id == identity.user_id:
            return await self.me(identity), True
        profile = await self.profiles.by_id(user_id)
        if profile is None or profile.deleted_at is not None:
            raise ProfileNotFound()
        if identity.is_admin:
            return profile, True
        if identity.tenant_id is not None and profile.tenant_id == identity.tenant_id:
            return profile, False
        raise ProfileNotFound()

    async def writable(self, identity: Identity, user_id: uuid.UUID) -> Profile:
        if user_id == identity.user_id:
            return await self.me(identity)
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
            total_pages=math.ceil(total / query.page_size),
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


def _datetime(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None
