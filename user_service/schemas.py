"""Request and response bodies of the user service.

Bodies that change a profile list only what a user may set; anything else (``id``, ``email``,
``role``, ``tenant_id``, timestamps, unknown names) is refused with 422, never applied.
"""

import uuid
import zoneinfo
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

MAX_PREFERENCES_BYTES = 16 * 1024

Name = Annotated[str, Meta(max_length=100)]
AvatarURL = Annotated[str, Meta(max_length=2048, pattern=r"^https?://[^\s]+$", description="An http(s) URL")]
Bio = Annotated[str, Meta(max_length=1000)]
Phone = Annotated[str, Meta(min_length=3, max_length=32, pattern=r"^\+?[0-9][0-9 ().-]*$")]
Timezone = Annotated[str, Meta(max_length=64, description="An IANA time zone, e.g. Europe/Paris")]
Locale = Annotated[str, Meta(max_length=35, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$", description="BCP 47")]
Preferences = Annotated[dict[str, Any], Meta(description="A JSON object of at most 16 KB")]


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: object) -> None:
    if isinstance(value, str) and value not in _timezones():
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Paris is expected)")


def check_preferences(value: object) -> None:
    if isinstance(value, dict) and len(msgspec.json.encode(value)) > MAX_PREFERENCES_BYTES:
        raise ValueError(f"preferences must be at most {MAX_PREFERENCES_BYTES} bytes of JSON")


class ProfileReplace(Struct, forbid_unknown_fields=True):
    """PUT: every field a user may set; one left out is cleared."""

    first_name: Name | None = None
    last_name: Name | None = None
    display_name: Name | None = None
    avatar_url: AvatarURL | None = None
    bio: Bio | None = None
    phone: Phone | None = None
    timezone: Timezone | None = None
    locale: Locale | None = None
    preferences: Preferences = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_timezone(self.timezone)
        check_preferences(self.preferences)


class ProfileUpdate(Struct, forbid_unknown_fields=True):
    """PATCH: only the fields given change (``null`` clears one)."""

    first_name: Name | UnsetType | None = UNSET
    last_name: Name | UnsetType | None = UNSET
    display_name: Name | UnsetType | None = UNSET
    avatar_url: AvatarURL | UnsetType | None = UNSET
    bio: Bio | UnsetType | None = UNSET
    phone: Phone | UnsetType | None = UNSET
    timezone: Timezone | UnsetType | None = UNSET
    locale: Locale | UnsetType | None = UNSET
    preferences: Preferences | UnsetType = UNSET

    def __post_init__(self) -> None:
        check_timezone(self.timezone)
        check_preferences(self.preferences)

    def changes(self) -> dict[str, Any]:
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not UNSET}


class ProfileRead(Struct):
    """The whole profile: for its owner and administrators."""

    id: uuid.UUID
    email: str
    first_name: str | None
    last_name: str | None
    display_name: str | None
    avatar_url: str | None
    bio: str | None
    phone: str | None
    timezone: str | None
    locale: str | None
    preferences: dict[str, Any]
    tenant_id: uuid.UUID | None
    role: str
    is_active: bool
    email_verified: bool
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ProfilePublic(Struct):
    """What an organisation's owners and admins see of its members' profiles."""

    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    display_name: str | None
    avatar_url: str | None
    bio: str | None
    tenant_id: uuid.UUID | None


class ProfileList(Struct):
    users: list[ProfileRead]
    total: int
    page: int
    page_size: int
    total_pages: int


SortField = Literal["email", "first_name", "last_name", "created_at", "updated_at", "last_login_at"]
SortOrder = Literal["asc", "desc"]
Role = Literal["user", "admin"]


class ProfileQuery(Struct, frozen=True):
    """The list route's filters, sort and page, as the service takes them."""

    page: int = 1
    page_size: int = 20
    search: str | None = None
    role: Role | None = None
    is_active: bool | None = None
    tenant_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort_by: SortField = "created_at"
    sort_order: SortOrder = "desc"


def profile_read(profile: Any) -> ProfileRead:
    return msgspec.convert(profile, ProfileRead, from_attributes=True)


def profile_public(profile: Any) -> ProfilePublic:
    return msgspec.convert(profile, ProfilePublic, from_attributes=True)


class MemberRead(Struct):
    """An organisation's member: the role and the profile (fields ``None`` while the profile has
    not arrived from the auth service yet)."""

    user_id: uuid.UUID
    role: str
    joined_at: datetime
    email: str | None
    first_name: str | None
    last_name: str | None
    display_name: str | None
    avatar_url: str | None
    is_active: bool | None


class MemberList(Struct):
    members: list[MemberRead]
    total: int
    page: int
    page_size: int
    total_pages: int


def member_read(membership: Any, profile: Any | None) -> MemberRead:
    return MemberRead(
        user_id=membership.user_id,
        role=membership.role,
        joined_at=membership.joined_at,
        email=profile.email if profile else None,
        first_name=profile.first_name if profile else None,
        last_name=profile.last_name if profile else None,
        display_name=profile.display_name if profile else None,
        avatar_url=profile.avatar_url if profile else None,
        is_active=profile.is_active if profile else None,
    )
