"""Data access for the auth service: AsyncSession in, models out."""

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, Update, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from auth_service.models import AuthSession, OneTimeToken, RefreshToken, User
from auth_service.schemas import UserRead
from shared.db import DirectStatements

USERS = cast(Table, User.__table__)
# What ``GET /auth/me`` shows of an account: its hash stays in the database.
ACCOUNT_BY_ID = select(*(USERS.c[field] for field in UserRead.__struct_fields__)).where(USERS.c.id == bindparam("id"))


async def committed_account(direct: DirectStatements, user_id: uuid.UUID) -> dict[str, Any] | None:
    """The account as committed (DirectStatements: the hottest read, ``GET /auth/me``)."""
    return await direct.first(ACCOUNT_BY_ID, id=user_id)


async def updated_once(session: AsyncSession, statement: Update) -> bool:
    """Run an UPDATE of one row whose condition says it is still unclaimed; False when a concurrent
    request claimed it first (the condition matched no row any more)."""
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return bool(getattr(result, "rowcount", 0) == 1)


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email))

    async def by_id(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        return user

    async def lock_is_active(self, user: User) -> bool:
        """The account's ``is_active`` as committed now, its row locked until this transaction
        ends: an UPDATE, not SELECT ... FOR UPDATE, so that it waits for a concurrent writer's
        commit on SQLite too (the embedded mode), whose only lock is the database's write lock."""
        # The table, not the entity: the ORM's bulk-UPDATE bookkeeping costs more than the UPDATE.
        users = cast(Table, User.__table__)
        locked = (
            update(users).where(users.c.id == user.id).values(is_active=users.c.is_active).returning(users.c.is_active)
        )
        is_active = bool((await self.session.execute(locked)).scalar_one())
        set_committed_value(user, "is_active", is_active)
        return is_active


class SessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, auth_session: AuthSession, token: RefreshToken) -> None:
        self.session.add_all([auth_session, token])  # the unit of work inserts the session first
        await self.session.flush()

    async def add_token(self, token: RefreshToken) -> None:
        self.session.add(token)
        await self.session.flush()

    async def token_by_hash(self, token_hash: str) -> RefreshToken | None:
        return await self.session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == token_hash).execution_options(populate_existing=True)
        )

    async def claim_for_rotation(self, token_id: uuid.UUID, now: datetime) -> bool:
        """Mark the token rotated; False when a concurrent request got there first."""
        unrotated = update(RefreshToken).where(RefreshToken.id == token_id, RefreshToken.rotated_at.is_(None))
        return await updated_once(self.session, unrotated.values(rotated_at=now))

    async def by_id(self, session_id: uuid.UUID) -> AuthSession | None:
        return await self.session.get(AuthSession, session_id)

    async def active_for_user(self, user_id: uuid.UUID, now: datetime) -> list[AuthSession]:
        rows = await self.session.scalars(
            select(AuthSession)
            .where(
                AuthSession.user_id == user_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
            )
            .order_by(AuthSession.created_at.desc())
        )
        return list(rows)

    async def revoke(self, session_ids: list[uuid.UUID], now: datetime) -> None:
        if session_ids:
            await self.session.execute(
                update(AuthSession)
                .where(AuthSession.id.in_(session_ids), AuthSession.revoked_at.is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )


class OneTimeTokenRepository:
    """Tokens sent by mail: usable once, until they expire or a newer one voids them."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, token: OneTimeToken) -> None:
        self.session.add(token)
        await self.session.flush()

    async def usable(self, token_hash: str, purposes: tuple[str, ...], now: datetime) -> OneTimeToken | None:
        """The unused, unexpired token with this hash, if it was made for one of ``purposes``."""
        return await self.session.scalar(
            select(OneTimeToken).where(
                OneTimeToken.token_hash == token_hash,
                OneTimeToken.purpose.in_(purposes),
                OneTimeToken.used_at.is_(None),
                OneTimeToken.expires_at > now,
            )
        )

    async def consume(self, token_id: uuid.UUID, now: datetime) -> bool:
        """Mark the token used; False when a concurrent request used it first."""
        unused = update(OneTimeToken).where(OneTimeToken.id == token_id, OneTimeToken.used_at.is_(None))
        return await updated_once(self.session, unused.values(used_at=now))

    async def void_unused(self, user_id: uuid.UUID, purpose: str, now: datetime) -> None:
        await self.session.execute(
            update(OneTimeToken)
            .where(OneTimeToken.user_id == user_id, OneTimeToken.purpose == purpose, OneTimeToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
