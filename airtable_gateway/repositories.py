"""Data access for the Airtable gateway: AsyncSession in, models out."""

import uuid

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.models import BaseGrant, UserToken


class UserTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> UserToken | None:
        return await self.session.get(UserToken, user_id)

    async def save(self, user_id: uuid.UUID, ciphertext: bytes, hint: str) -> UserToken:
        row = await self.get(user_id)
        if row is None:
            row = UserToken(user_id=user_id, ciphertext=ciphertext, hint=hint)
            self.session.add(row)
        else:
            row.ciphertext, row.hint = ciphertext, hint
        await self.session.flush()
        return row

    async def delete(self, user_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            delete(UserToken).where(UserToken.user_id == user_id).execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))


class GrantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def access_of(self, organization_id: uuid.UUID, base_id: str) -> str | None:
        """The hot path: one lookup on the (organization_id, base_id) unique index."""
        return await self.session.scalar(
            select(BaseGrant.access).where(BaseGrant.organization_id == organization_id, BaseGrant.base_id == base_id)
        )

    async def bases_of(self, organization_id: uuid.UUID) -> dict[str, str]:
        """Every base the organisation is granted, with its access."""
        rows = await self.session.execute(
            select(BaseGrant.base_id, BaseGrant.access).where(BaseGrant.organization_id == organization_id)
        )
        return {base_id: access for base_id, access in rows.all()}

    async def get(self, organization_id: uuid.UUID, base_id: str) -> BaseGrant | None:
        return await self.session.scalar(
            select(BaseGrant).where(BaseGrant.organization_id == organization_id, BaseGrant.base_id == base_id)
        )

    async def listing(self, organization_id: uuid.UUID | None) -> list[BaseGrant]:
        query = select(BaseGrant).order_by(BaseGrant.organization_id, BaseGrant.base_id)
        if organization_id is not None:
            query = query.where(BaseGrant.organization_id == organization_id)
        return list(await self.session.scalars(query))

    async def add(self, grant: BaseGrant) -> BaseGrant:
        self.session.add(grant)
        await self.session.flush()
        return grant

    async def delete_organization(self, organization_id: uuid.UUID) -> int:
        result = await self.session.execute(
            delete(BaseGrant)
            .where(BaseGrant.organization_id == organization_id)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def delete(self, grant: BaseGrant) -> None:
        await self.session.delete(grant)
        await self.session.flush()
