"""Dependency providers of the user service."""

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncSession

from shared.controllers import CALLER
from shared.security import Identity
from user_service.services import MembershipService, OwnProfile, ProfileService


def provide_profile_service(db_session: NamedDependency[AsyncSession], state: State) -> ProfileService:
    return ProfileService(db=db_session, clock=state.clock, direct=state.direct)


def provide_own_profile(caller: NamedDependency[Identity], state: State) -> OwnProfile:
    # Built from ``caller`` (resolved first), not beside a request session: a handler whose
    # dependencies form one chain resolves them in turn, with no task group for a batch of two.
    return OwnProfile(caller, state.direct, state.sessionmaker, state.clock)


def provide_membership_service(db_session: NamedDependency[AsyncSession]) -> MembershipService:
    return MembershipService(db=db_session)


# What the users controller takes: the services of the request and the signed-in caller.
USER_DEPENDENCIES = {
    "profiles": Provide(provide_profile_service, sync_to_thread=False),
    "own_profile": Provide(provide_own_profile, sync_to_thread=False),
    "memberships": Provide(provide_membership_service, sync_to_thread=False),
    **CALLER,
}

# A handler's ``profiles: Profiles`` and ``memberships: Memberships`` (the parameters' names are the
# dependencies'): the services of the request.
Profiles = NamedDependency[ProfileService]
Memberships = NamedDependency[MembershipService]
OwnProfileOf = NamedDependency[OwnProfile]
