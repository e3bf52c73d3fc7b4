"""Data access for the Airtable gateway: AsyncSession in, models out."""

import uuid

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.models import UserToken


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
