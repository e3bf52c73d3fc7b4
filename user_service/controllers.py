import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, delete, get, patch, put
from litestar.params import FromPath, JSONBody, QueryParameter

from shared.controllers import BEARER, Caller, Page, PageSize
from shared.http import as_utc
from shared.security import require_admin
from user_service.deps import USER_DEPENDENCIES, Memberships, OwnProfileOf, Profiles
from user_service.errors import OrganizationManagersOnly, OrganizationNotFound
from user_service.schemas import (
    MemberList,
    ProfileList,
    ProfilePublic,
    ProfileQuery,
    ProfileRead,
    ProfileReplace,
    ProfileUpdate,
    Role,
    SortField,
    SortOrder,
    profile_public,
    profile_read,
)


class UserController(Controller):
    """Profiles: your own at /me; others' as their owner, an admin, or (public fields) an owner or
    admin of an organisation they belong to; an organisation's members."""

    path = "/api/v1/users"
    tags = ["users"]
    security = BEARER
    dependencies = USER_DEPENDENCIES

    @get("/", operation_id="list_users", guards=[require_admin])
    async def list_users(
        self,
        profiles: Profiles,
        page: Page = 1,
        page_size: PageSize = 20,
        search: Annotated[str | None, QueryParameter(max_length=100, description="name or email substring")] = None,
        role: Annotated[Role | None, QueryParameter()] = None,
        is_active: Annotated[bool | None, QueryParameter()] = None,
        tenant_id: Annotated[uuid.UUID | None, QueryParameter()] = None,
        created_after: Annotated[datetime | None, QueryParameter(description="inclusive")] = None,
        created_before: Annotated[datetime | None, QueryParameter(description="exclusive")] = None,
        sort_by: Annotated[SortField, QueryParameter()] = "created_at",
        sort_order: Annotated[SortOrder, QueryParameter()] = "desc",
    ) -> ProfileList:
        """Every profile, filtered, sorted and paged (admins only)."""
        query = ProfileQuery(
            page=page,
            page_size=page_size,
            search=search.strip() or None if search else None,
            role=role,
            is_active=is_active,
            tenant_id=tenant_id,
            created_after=as_utc(created_after, "created_after"),
            created_before=as_utc(created_before, "created_before"),
            sort_by=sort_by,
            sort_order=sort_order,
        )
        return await profiles.list(query)

    @get(
        "/orgs/{organization_id:uuid}/members",
        operation_id="list_organization_members",
        raises=[OrganizationManagersOnly, OrganizationNotFound],
    )
    async def list_organization_members(
        self,
        organization_id: FromPath[uuid.UUID],
        caller: Caller,
        memberships: Memberships,
        page: Page = 1,
        page_size: PageSize = 20,
    ) -> MemberList:
        """An organisation's members with their roles and profiles, earliest first: for its owners and
        admins (it must be their active organisation) and platform admins; 403 for its other members,
        404 for anyone else."""
        return await memberships.members(caller, organization_id, page, page_size)

    @get("/me", operation_id="get_my_profile")
    async def get_me(self, own_profile: OwnProfileOf) -> ProfileRead:
        """Your profile (created from your token if the registration event is still on its way)."""
        return profile_read(await own_profile.read())

    @put("/me", operation_id="replace_my_profile")
    async def replace_me(self, data: JSONBody[ProfileReplace], caller: Caller, profiles: Profiles) -> ProfileRead:
        """Replace every field you may set; those left out are cleared."""
        return profile_read(await profiles.replace(caller, caller.user_id, _fields(data)))

    @patch("/me", operation_id="update_my_profile")
    async def update_me(self, data: JSONBody[ProfileUpdate], caller: Caller, profiles: Profiles) -> ProfileRead:
        """Change the fields given."""
        return profile_read(await profiles.update(caller, caller.user_id, data.changes()))

    @get("/{user_id:uuid}", operation_id="get_user")
    async def get_user(
        self, user_id: FromPath[uuid.UUID], caller: Caller, profiles: Profiles
    ) -> ProfileRead | ProfilePublic:
        """A profile: all of it for its owner and platform admins, the public fields for the owners and
        admins of the caller's active organisation when the user is a member of it; else 404."""
        profile, full = await profiles.visible(caller, user_id)
        return profile_read(profile) if full else profile_public(profile)

    @put("/{user_id:uuid}", operation_id="replace_user")
    async def replace_user(
        self, user_id: FromPath[uuid.UUID], data: JSONBody[ProfileReplace], caller: Caller, profiles: Profiles
    ) -> ProfileRead:
        """Replace a profile's settable fields (its owner or an admin)."""
        return profile_read(await profiles.replace(caller, user_id, _fields(data)))

    @patch("/{user_id:uuid}", operation_id="update_user")
    async def update_user(
        self, user_id: FromPath[uuid.UUID], data: JSONBody[ProfileUpdate], caller: Caller, profiles: Profiles
    ) -> ProfileRead:
        """Change some of a profile's fields (its owner or an admin)."""
        return profile_read(await profiles.update(caller, user_id, data.changes()))

    @delete("/{user_id:uuid}", operation_id="delete_user")
    async def delete_user(self, user_id: FromPath[uuid.UUID], caller: Caller, profiles: Profiles) -> None:
        """Delete a profile (its owner or an admin); the account is closed and its tokens refused."""
        await profiles.delete(caller, user_id)


def _fields(data: ProfileReplace) -> dict[str, object]:
    return {name: getattr(data, name) for name in data.__struct_fields__}
