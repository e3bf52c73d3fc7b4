"""``python -m auth_service create-admin --email ...``: bootstrap or promote an administrator.

There are no built-in admin credentials: the password comes from ``--password-stdin`` or the
``ADMIN_PASSWORD`` variable, or a random one is generated and printed once.
"""

import argparse
import asyncio
import os
import secrets
import sys
import uuid

from auth_service.config import AuthSettings
from auth_service.memberships import OWNER, Memberships, organization_name_for
from auth_service.models import User, outbox
from auth_service.passwords import Passwords
from auth_service.repositories import UserRepository
from auth_service.services import normalise_email, user_event_data
from shared.db import create_engine, create_sessionmaker, utcnow
from shared.events import new_event
from shared.outbox import add_event
from shared.settings import ServiceSettings


def add_create_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--email", required=True)
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def create_admin_command(settings: ServiceSettings, args: argparse.Namespace) -> int:
    assert isinstance(settings, AuthSettings)
    password = _password(args)
    generated = password is None
    password = password or secrets.token_urlsafe(18)
    created = asyncio.run(create_admin(settings, args.email, password))
    print(f"{'created' if created else 'promoted'} admin {normalise_email(args.email)}")
    if generated and created:
        print(f"generated password (shown once): {password}")
    return 0


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return os.environ.get("ADMIN_PASSWORD") or None


async def create_admin(settings: AuthSettings, email: str, password: str) -> bool:
    """Create the admin, or add the admin role to an existing account. True when created."""
    email = normalise_email(email)
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            users = UserRepository(session)
            user = await users.by_email(email)
            if user is not None:
                user.roles = sorted({*user.roles, "admin"})
                return False
            now = utcnow()
            user = User(
                id=uuid.uuid4(),
                email=email,
                password_hash=await Passwords(settings).hash(password),
                roles=["admin", "user"],
                tenant_id=None,
                is_active=True,
                created_at=now,
                updated_at=now,
            )
            memberships = Memberships(session)
            # The first organisation's id goes into user.registered; its membership is announced after it.
            user.tenant_id = (await memberships.new_organization(organization_name_for(user), now)).id
            await users.add(user)
            await add_event(session, outbox, new_event("user.registered", "auth", user_event_data(user)))
            await memberships.add(user.tenant_id, user.id, OWNER, now)
            return True
    finally:
        await engine.dispose()
