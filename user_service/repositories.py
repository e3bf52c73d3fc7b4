"""Data access for the user service: AsyncSession in, models out."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import insert_or_ignore
from user_service.models import Profile
from user_service.schemas import ProfileQuery


class ProfileRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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
