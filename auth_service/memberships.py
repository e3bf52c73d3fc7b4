"""Organisations and memberships as every path needs them (registration, sign-in, the
organisation routes): each membership change is published through the outbox in the caller's
transaction (``organization.member_added`` / ``_changed`` / ``_removed``)."""

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.errors import InvalidInvitation
from auth_service.models import Invitation, Membership, Organization, User, outbox
from auth_service.repositories import updated_once
from shared.audit import record_audit
from shared.events import new_event
from shared.outbox import add_event

OWNER = "owner"


def invitation_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def organization_name_for(user: User) -> str:
    """A new user's first organisation is named after them (or their address's local part)."""
    name = " ".join(part for part in (user.first_name, user.last_name) if part)
    return (name or user.email.partition("@")[0])[:100]


def _slug_base(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50] or "organization"


class Memberships:
    """Organisations and memberships, each change published through the outbox."""

    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    async def organization(self, organization_id: uuid.UUID) -> Organization | None:
        return await self.db.get(Organization, organization_id, populate_existing=True)

    async def of(self, organization_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
        return await self.db.get(Membership, (organization_id, user_id), populate_existing=True)

    async def role(self, organization_id: uuid.UUID | None, user_id: uuid.UUID) -> str | None:
        if organization_id is None:
            return None
        membership = await self.of(organization_id, user_id)
        return membership.role if membership else None

    async def of_user(self, user_id: uuid.UUID) -> list[tuple[Organization, Membership]]:
        """The user's organisations, each with the user's membership."""
        on = Membership.organization_id == Organization.id
        return await self._with_membership(Organization, on, Membership.user_id == user_id)

    async def members(self, organization_id: uuid.UUID) -> list[tuple[User, Membership]]:
        """The organisation's members, each with their membership."""
        on = Membership.user_id == User.id
        return await self._with_membership(User, on, Membership.organization_id == organization_id)

    async def _with_membership(
        self, entity: type[Organization | User], on: ColumnElement[bool], where: ColumnElement[bool]
    ) -> list[tuple[Any, Membership]]:
        """Rows of ``entity`` joined ``on`` their memberships that match ``where``, the earliest
        joined first (then by id, so the order is stable)."""
        query = select(entity, Membership).join(Membership, on).where(where)
        rows = await self.db.execute(query.order_by(Membership.created_at, entity.id))
        return [(row, membership) for row, membership in rows.all()]

    async def owner_count(self, organization_id: uuid.UUID) -> int:
        count = await self.db.scalar(
            select(func.count()).where(Membership.organization_id == organization_id, Membership.role == OWNER)
        )
        return int(count or 0)

    async def sign_in_organization(self, user: User) -> tuple[uuid.UUID, str] | None:
        """Where a sign-in starts: the organisation last made active, else the oldest membership."""
        if user.tenant_id is not None:
            role = await self.role(user.tenant_id, user.id)
            if role is not None:
                return user.tenant_id, role
        memberships = await self.of_user(user.id)
        if not memberships:
            return None
        org, membership = memberships[0]
        return org.id, membership.role

    async def found(self, user: User, name: str, now: datetime) -> Organization:
        """A new organisation with ``user`` its owner."""
        org = await self.new_organization(name, now)
        await self.add(org.id, user.id, OWNER, now)
        return org

    async def new_organization(self, name: str, now: datetime) -> Organization:
        """An organisation without members yet (its owner is added next, in the same transaction)."""
        org = Organization(
            id=uuid.uuid4(), name=name, slug=await self._free_slug(name), created_at=now, require_two_factor=False
        )
        self.db.add(org)
        await self.db.flush()
        return org

    async def _free_slug(self, name: str) -> str:
        base = _slug_base(name)
        slug = base
        while await self.db.scalar(select(Organization.id).where(Organization.slug == slug)) is not None:
            slug = f"{base}-{secrets.token_hex(3)}"
        return slug

    async def add(self, organization_id: uuid.UUID, user_id: uuid.UUID, role: str, now: datetime) -> None:
        self.db.add(Membership(organization_id=organization_id, user_id=user_id, role=role, created_at=now))
        await self.db.flush()
        await self._publish("organization.member_added", organization_id, user_id, role)

    async def change(self, membership: Membership, role: str) -> None:
        membership.role = role
        await self.db.flush()
        await self._publish("organization.member_changed", membership.organization_id, membership.user_id, role)

    async def remove(self, membership: Membership) -> None:
        organization_id, user_id = membership.organization_id, membership.user_id
        await self.db.execute(
            sql_delete(Membership).where(Membership.organization_id == organization_id, Membership.user_id == user_id)
        )
        await self._publish("organization.member_removed", organization_id, user_id, None)

    async def deleted(self, organization_id: uuid.UUID) -> None:
        await add_event(
            self.db, outbox, new_event("organization.deleted", "auth", {"organization_id": str(organization_id)})
        )

    async def _publish(self, event_type: str, organization_id: uuid.UUID, user_id: uuid.UUID, role: str | None) -> None:
        data = {"organization_id": str(organization_id), "user_id": str(user_id)}
        if role is not None:
            data["role"] = role
        await add_event(self.db, outbox, new_event(event_type, "auth", data))


async def usable_invitation(db: AsyncSession, token: str, now: datetime) -> Invitation:
    """The pending invitation of this token; InvalidInvitation for every other case."""
    row = await db.scalar(select(Invitation).where(Invitation.token_hash == invitation_hash(token)))
    if row is None or row.accepted_at is not None or row.revoked_at is not None or row.expires_at <= now:
        raise InvalidInvitation()
    return row


async def claim_invitation(db: AsyncSession, invitation: Invitation, now: datetime) -> None:
    """Mark it accepted; InvalidInvitation when a concurrent request used or revoked it first."""
    pending = update(Invitation).where(
        Invitation.id == invitation.id, Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None)
    )
    if not await updated_once(db, pending.values(accepted_at=now)):
        raise InvalidInvitation()


def same_address(a: str, b: str) -> bool:
    return hmac.compare_digest(a.strip().lower().encode(), b.strip().lower().encode())


async def record_invitation_accepted(db: AsyncSession, invitation: Invitation, user_id: uuid.UUID, ip: str) -> None:
    for action, target_type, target_id in (
        ("invitation.accepted", "invitation", invitation.id),
        ("member.joined", "user", user_id),
    ):
        await record_audit(
            db,
            outbox,
            "auth",
            action,
            actor_id=user_id,
            organization_id=invitation.organization_id,
            target_type=target_type,
            target_id=target_id,
            ip=ip,
            details={"role": invitation.role},
        )
