"""Data access for the user service: AsyncSession in, models out."""

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import DirectStatements, insert_or_ignore
from user_service.models import Membership, Profile
from user_service.schemas import ProfileQuery

PROFILES = cast(Table, Profile.__table__)
PROFILE_BY_ID = select(*PROFILES.c).where(PROFILES.c.id == bindparam("id"))


class ProfileRepository:
    def __init__(self, session: AsyncSession, direct: DirectStatements | None = None) -> None:
        self.session = session
        self.direct = direct

    async def committed(self, user_id: uuid.UUID) -> Profile | None:
        """The profile as committed, read outside the session (DirectStatements: the hottest read,
        ``GET /users/me``) when there are direct reads, else in the session, which must not have
        written it."""
        if self.direct is None:
            return await self.by_id(user_id)
        return await self.committed_direct(self.direct, user_id)

    @staticmethod
    async def committed_direct(direct: DirectStatements, user_id: uuid.UUID) -> Profile | None:
        row = await direct.first(PROFILE_BY_ID, id=user_id)
        return None if row is None else Profile(**row)

    async def by_id(self, user_id: uuid.UUID, *, for_update: bool = False) -> Profile | None:
        statement = select(Profile).where(Profile.id == user_id).execution_options(populate_existing=True)
        if for_update:
            statement = statement.with_for_update()
        return await self.session.scalar(statement)

    async def add_if_absent(self, values: dict[str, Any]) -> bool:
        """Insert the profile unless one with its id exists (created concurrently, or deleted)."""
        return await insert_or_ignore(self.session, Profile.__table__, values)  # type: ignore[arg-type]

    async def search(self, query: ProfileQuery) -> tuple[list[Profile], int]:
        conditions = _conditions(query)
        total = await self.session.scalar(select(func.count()).select_from(Profile).where(*conditions)) or 0
        column = getattr(Profile, query.sort_by)
        order = column.asc() if query.sort_order == "asc" else column.desc()
        rows = await self.session.scalars(
            select(Profile)
            .where(*conditions)
            .order_by(order.nulls_last(), Profile.id.asc())
            .offset((query.page - 1) * query.page_size)
            .limit(query.page_size)
        )
        return list(rows), int(total)

    async def purge_deleted(self, before: datetime) -> int:
        """Remove for good the profiles soft-deleted before ``before``; how many."""
        doomed = list(await self.session.scalars(select(Profile.id).where(Profile.deleted_at < before)))
        if doomed:
            await self.session.execute(delete(Profile).where(Profile.id.in_(doomed)))
        return len(doomed)


def _conditions(query: ProfileQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Profile.deleted_at.is_(None)]
    if query.search:
        pattern = "%" + query.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(
            or_(
                *(
                    func.lower(column).like(pattern, escape="\\")
                    for column in (Profile.email, Profile.first_name, Profile.last_name, Profile.display_name)
                )
            )
        )
    if query.role is not None:
        conditions.append(Profile.role == query.role)
    if query.is_active is not None:
        conditions.append(Profile.is_active.is_(query.is_active))
    if query.tenant_id is not None:
        conditions.append(Profile.tenant_id == query.tenant_id)
    if query.created_after is not None:
        conditions.append(Profile.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(Profile.created_at < query.created_before)
    return conditions


class MembershipRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, organization_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
        statement = (
            select(Membership)
            .where(Membership.organization_id == organization_id, Membership.user_id == user_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return await self.session.scalar(statement)

    async def add_if_absent(self, values: dict[str, Any]) -> bool:
        return await insert_or_ignore(self.session, Membership.__table__, values)  # type: ignore[arg-type]

    async def delete_organization(self, organization_id: uuid.UUID) -> int:
        result = await self.session.execute(delete(Membership).where(Membership.organization_id == organization_id))
        return int(getattr(result, "rowcount", 0) or 0)

    async def is_member(self, organization_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        found = await self.session.scalar(
            select(Membership.user_id).where(
                Membership.organization_id == organization_id,
                Membership.user_id == user_id,
                Membership.removed_at.is_(None),
            )
        )
        return found is not None

    async def members(self, organization_id: uuid.UUID, page: int, page_size: int) -> tuple[list[Any], int]:
        """The organisation's current members with their profiles (None while a profile has not
        arrived yet), earliest first; members whose profile is deleted are left out."""
        conditions = [
            Membership.organization_id == organization_id,
            Membership.removed_at.is_(None),
            Profile.deleted_at.is_(None),
        ]
        joined = select(Membership, Profile).outerjoin(Profile, Profile.id == Membership.user_id).where(*conditions)
        total = await self.session.scalar(select(func.count()).select_from(joined.subquery())) or 0
        rows = await self.session.execute(
            joined.order_by(Membership.joined_at.asc(), Membership.user_id.asc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
        return list(rows), int(total)
