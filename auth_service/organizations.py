"""Organisations: teams of users with a role each (owner, admin, member, viewer), and the
invitations that bring new members in.

Every permission is read from the ``memberships`` table at the time of the request, never from
the caller's token alone: a member removed or demoted a moment ago cannot act with the token they
still hold. An organisation the caller does not belong to answers 404, as an unknown one does.
Each membership change is published (``organization.member_*`` events through the outbox) and
audited (``member.*``) in the transaction that makes it; a changed or removed member's access
tokens are revoked (the per-user cut-off), so the change holds at the gateway on their next
request and their next refresh gets the new role.
"""

import secrets
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

import msgspec
from litestar import delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta, Struct
from sqlalchemy import select, update

from auth_service.api_keys import (
    KEY_DEPENDENCIES,
    KINDS,
    SERVICE,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyNotFound,
    ApiKeys,
    UserTokenController,
)
from auth_service.deps import AUTH_DEPENDENCIES, Auth
from auth_service.errors import (
    AlreadyMember,
    InvalidInvitation,
    InvitationEmailMismatch,
    InvitationNotFound,
    LastOwner,
    MemberNotFound,
    OrganizationNotFound,
    OrgRoleRequired,
    TooManyAttempts,
    TwoFactorNotEnabled,
    TwoFactorRequired,
)
from auth_service.memberships import (
    OWNER,
    claim_invitation,
    invitation_hash,
    organization_name_for,
    record_invitation_accepted,
    same_address,
    usable_invitation,
)
from auth_service.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    TwoFactor,
    User,
    mail_outbox,
    outbox,
)
from auth_service.schemas import Email, OpaqueToken, TokenResponse
from auth_service.services import AuthService, Client, normalise_email
from shared.audit import record_audit
from shared.controllers import Caller
from shared.mail import MailTemplates, queue_mail
from shared.security import ORG_MANAGERS, Identity

INVITATION_TTL = timedelta(days=7)
MAIL_TEMPLATES = MailTemplates("auth_service")

OrgRole = Literal["owner", "admin", "member", "viewer"]
OrgName = Annotated[
    str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")
]


# -- bodies ------------------------------------------------------------------------------


class OrganizationCreate(Struct, forbid_unknown_fields=True):
    name: OrgName


class OrganizationRename(Struct, forbid_unknown_fields=True):
    name: OrgName


class OrganizationSettings(Struct, forbid_unknown_fields=True):
    require_two_factor: bool


class OrganizationRead(Struct):
    """An organisation as one of its members sees it, with the member's own role."""

    id: uuid.UUID
    name: str
    slug: str
    role: str
    require_two_factor: bool
    created_at: datetime


class OrganizationList(Struct):
    organizations: list[OrganizationRead]


class MemberRead(Struct):
    user_id: uuid.UUID
    email: str
    first_name: str | None
    last_name: str | None
    role: str
    joined_at: datetime


class MemberList(Struct):
    members: list[MemberRead]


class RoleChange(Struct, forbid_unknown_fields=True):
    role: OrgRole


class InvitationCreate(Struct, forbid_unknown_fields=True):
    email: Email
    role: OrgRole = "member"


class InvitationRead(Struct):
    """A pending invitation; its token is only ever in the mail."""

    id: uuid.UUID
    email: str
    role: str
    invited_by: uuid.UUID | None
    created_at: datetime
    expires_at: datetime


class InvitationList(Struct):
    invitations: list[InvitationRead]


class InvitationAccept(Struct, forbid_unknown_fields=True):
    token: OpaqueToken


def organization_read(org: Organization, role: str) -> OrganizationRead:
    return OrganizationRead(
        id=org.id,
        name=org.name,
        slug=org.slug,
        role=role,
        require_two_factor=org.require_two_factor,
        created_at=org.created_at,
    )


def member_read(user: User, membership: Membership) -> MemberRead:
    return MemberRead(
        user_id=user.id,
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        role=membership.role,
        joined_at=membership.created_at,
    )


def invitation_read(row: Invitation) -> InvitationRead:
    return msgspec.convert(row, InvitationRead, from_attributes=True)


# -- the organisation routes' logic ------------------------------------------------------


class OrganizationService:
    """The organisation routes' logic for one request: ``caller`` acts, from ``client``."""

    def __init__(self, auth: AuthService, caller: Identity, client: Client) -> None:
        self.auth = auth  # its transaction, settings, clock and revocations are the request's
        self.db = auth.db
        self.caller = caller
        self.client = client
        self.memberships = auth.memberships

    # -- who may do what: always the database's membership

    async def _membership(self, organization_id: uuid.UUID, *roles: str) -> Membership:
        """The caller's membership: 404 when there is none (never reveal an organisation), 403
        when ``roles`` are given and the caller's is not one of them."""
        membership = await self.memberships.of(organization_id, self.caller.user_id)
        if membership is None:
            raise OrganizationNotFound()
        if roles and membership.role not in roles:
            raise OrgRoleRequired()
        return membership

    async def require_manager(self, organization_id: uuid.UUID) -> None:
        """An owner or admin of the organisation (404 for a non-member, 403 for a weaker role)."""
        await self._membership(organization_id, *ORG_MANAGERS)

    async def _organization(self, organization_id: uuid.UUID) -> Organization:
        org = await self.memberships.organization(organization_id)
        if org is None:
            raise OrganizationNotFound()
        return org

    async def _audit(self, action: str, organization_id: uuid.UUID, **fields: object) -> None:
        """An audit entry of the caller's action in the organisation, in the request's transaction."""
        await record_audit(
            self.db,
            outbox,
            "auth",
            action,
            actor_id=self.caller.user_id,
            organization_id=organization_id,
            ip=self.client.ip,
            **fields,
        )

    # -- organisations

    async def create(self, name: str) -> OrganizationRead:
        user = await self.auth.me(self.caller)
        org = await self.memberships.found(user, name.strip(), self.auth.clock())
        await self._audit("org.created", org.id, target_type="organization", target_id=org.id)
        return organization_read(org, OWNER)

    async def mine(self) -> OrganizationList:
        rows = await self.memberships.of_user(self.caller.user_id)
        return OrganizationList(organizations=[organization_read(org, m.role) for org, m in rows])

    async def get(self, organization_id: uuid.UUID) -> OrganizationRead:
        membership = await self._membership(organization_id)
        return organization_read(await self._organization(organization_id), membership.role)

    async def rename(self, organization_id: uuid.UUID, name: str) -> OrganizationRead:
        membership = await self._membership(organization_id, *ORG_MANAGERS)
        org = await self._organization(organization_id)
        org.name = name.strip()
        await self._audit("org.renamed", org.id, target_type="organization", target_id=org.id)
        return organization_read(org, membership.role)

    async def configure(self, organization_id: uuid.UUID, settings: OrganizationSettings) -> OrganizationRead:
        """The owner's settings; only an owner with two-factor on may require it of everyone."""
        membership = await self._membership(organization_id, OWNER)
        org = await self._organization(organization_id)
        if settings.require_two_factor and not org.require_two_factor:
            factor = await self.db.get(TwoFactor, self.caller.user_id)
            if factor is None or factor.confirmed_at is None:
                raise TwoFactorNotEnabled("Turn two-factor sign-in on for yourself before requiring it of the members.")
        org.require_two_factor = settings.require_two_factor
        await self._audit(
            "org.settings_changed",
            org.id,
            target_type="organization",
            target_id=org.id,
            details={"require_two_factor": settings.require_two_factor},
        )
        return organization_read(org, membership.role)

    async def delete(self, organization_id: uuid.UUID) -> None:
        """The owner deletes the organisation: its memberships, invitations and service keys go
        with it (each member's access tokens are cut off, each key's tokens revoked); personal keys
        made in it stay, acting in no organisation."""
        await self._membership(organization_id, OWNER)
        org = await self._organization(organization_id)
        members = [membership for _, membership in await self.memberships.members(organization_id)]
        service_keys = list(
            await self.db.scalars(
                select(ApiKey.id).where(ApiKey.organization_id == organization_id, ApiKey.kind == KINDS[SERVICE])
            )
        )
        await self.db.execute(
            update(ApiKey)
            .where(ApiKey.organization_id == organization_id, ApiKey.kind != KINDS[SERVICE])
            .values(organization_id=None)
            .execution_options(synchronize_session=False)
        )
        await self.db.execute(
            update(User)
            .where(User.tenant_id == organization_id)
            .values(tenant_id=None)
            .execution_options(synchronize_session=False)
        )
        for membership in members:
            await self.memberships.remove(membership)
        await self.db.delete(org)  # invitations, service keys cascade; sessions lose it (SET NULL)
        await self.db.flush()
        await self.memberships.deleted(organization_id)
        await self._audit("org.deleted", organization_id, target_type="organization", target_id=org.id)
        for membership in members:
            await self.auth.revoke_user_access(membership.user_id)
        for key_id in service_keys:
            await self.auth.revocations.revoke_session(str(key_id), self.auth.settings.api_key_token_ttl + 60)

    # -- members

    async def members(self, organization_id: uuid.UUID) -> MemberList:
        await self._membership(organization_id)
        rows = await self.memberships.members(organization_id)
        return MemberList(members=[member_read(user, membership) for user, membership in rows])

    async def _target(self, organization_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
        target = await self.memberships.of(organization_id, user_id)
        if target is None:
            raise MemberNotFound()
        return target

    async def change_role(self, organization_id: uuid.UUID, user_id: uuid.UUID, role: str) -> MemberRead:
        """Owners and admins change roles; only an owner grants or takes ``owner``."""
        caller = await self._membership(organization_id, *ORG_MANAGERS)
        target = await self._target(organization_id, user_id)
        if OWNER in (role, target.role) and caller.role != OWNER:
            raise OrgRoleRequired("Only an owner may grant the owner role or change an owner's.")
        previous = target.role
        if previous == role:
            return await self._member_read(target)
        if previous == OWNER and await self.memberships.owner_count(organization_id) <= 1:
            raise LastOwner()
        await self.memberships.change(target, role)
        await self._audit(
            "member.role_changed",
            organization_id,
            target_type="user",
            target_id=user_id,
            details={"from": previous, "to": role},
        )
        await self.auth.revoke_user_access(user_id)
        return await self._member_read(target)

    async def _member_read(self, membership: Membership) -> MemberRead:
        user = await self.db.get(User, membership.user_id)
        assert user is not None  # a membership's user exists (foreign key, cascading delete)
        return member_read(user, membership)

    async def remove(self, organization_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Owners and admins remove members; an admin never removes an owner."""
        caller = await self._membership(organization_id, *ORG_MANAGERS)
        target = await self._target(organization_id, user_id)
        if target.role == OWNER and caller.role != OWNER:
            raise OrgRoleRequired("Only an owner may remove an owner.")
        await self._leave(target)
        action = "member.left" if user_id == self.caller.user_id else "member.removed"
        await self._audit(action, organization_id, target_type="user", target_id=user_id)
        await self.auth.revoke_user_access(user_id)

    async def leave(self, organization_id: uuid.UUID) -> None:
        membership = await self._membership(organization_id)
        await self._leave(membership)
        await self._audit("member.left", organization_id, target_type="user", target_id=self.caller.user_id)
        await self.auth.revoke_user_access(self.caller.user_id)

    async def _leave(self, membership: Membership) -> None:
        if membership.role == OWNER and await self.memberships.owner_count(membership.organization_id) <= 1:
            raise LastOwner()
        await self.memberships.remove(membership)

    # -- invitations

    async def invite(self, organization_id: uuid.UUID, data: InvitationCreate) -> InvitationRead:
        """Mail an invitation (a 256-bit token, kept as its SHA-256, valid 7 days, single use); an
        earlier pending invitation of the address to this organisation is replaced."""
        caller = await self._membership(organization_id, *ORG_MANAGERS)
        if data.role == OWNER and caller.role != OWNER:
            raise OrgRoleRequired("Only an owner may invite an owner.")
        email = normalise_email(data.email)
        org = await self._organization(organization_id)
        if any(same_address(user.email, email) for user, _ in await self.memberships.members(organization_id)):
            raise AlreadyMember()
        # Anyone may found an organisation and invite: an address gets a bounded number of
        # invitations an hour, so the route cannot flood a mailbox.
        await self.auth.throttle.check_address("invitation", email)
        now = self.auth.clock()
        replaced = update(Invitation).where(
            Invitation.organization_id == organization_id,
            Invitation.email == email,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
        )
        if caller.role != OWNER:  # an admin cannot revoke an owner's invitation to be owner
            replaced = replaced.where(Invitation.role != OWNER)
        await self.db.execute(replaced.values(revoked_at=now).execution_options(synchronize_session=False))
        token = secrets.token_urlsafe(32)
        row = Invitation(
            id=uuid.uuid4(),
            organization_id=organization_id,
            email=email,
            role=data.role,
            token_hash=invitation_hash(token),
            invited_by=self.caller.user_id,
            created_at=now,
            expires_at=now + INVITATION_TTL,
        )
        self.db.add(row)
        await self.db.flush()
        inviter = await self.auth.me(self.caller)
        link = self.auth.settings.site_url.rstrip("/") + f"/accept-invitation?token={token}"
        message = MAIL_TEMPLATES.render(
            "invitation",
            email,
            organization=org.name,
            inviter=organization_name_for(inviter),
            role=data.role,
            link=link,
            valid_for="7 days",
        )
        await queue_mail(self.db, mail_outbox, message, now)
        await self._audit(
            "invitation.created",
            organization_id,
            target_type="invitation",
            target_id=row.id,
            details={"role": data.role},
        )
        return invitation_read(row)

    async def invitations(self, organization_id: uuid.UUID) -> InvitationList:
        await self._membership(organization_id, *ORG_MANAGERS)
        rows = await self.db.scalars(
            select(Invitation)
            .where(
                Invitation.organization_id == organization_id,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
                Invitation.expires_at > self.auth.clock(),
            )
            .order_by(Invitation.created_at)
        )
        return InvitationList(invitations=[invitation_read(row) for row in rows])

    async def revoke_invitation(self, organization_id: uuid.UUID, invitation_id: uuid.UUID) -> None:
        caller = await self._membership(organization_id, *ORG_MANAGERS)
        row = await self.db.get(Invitation, invitation_id)
        if row is None or row.organization_id != organization_id or row.accepted_at or row.revoked_at:
            raise InvitationNotFound()
        if row.role == OWNER and caller.role != OWNER:
            raise OrgRoleRequired("Only an owner may revoke an invitation to be owner.")
        row.revoked_at = self.auth.clock()
        await self._audit("invitation.revoked", organization_id, target_type="invitation", target_id=row.id)

    async def accept(self, token: str) -> OrganizationRead:
        """A signed-in user joins with an invitation sent to their (verified) address."""
        await self.auth.throttle.check_ip("invitation", self.client.ip)
        user = await self.auth.me(self.caller)
        now = self.auth.clock()
        invitation = await usable_invitation(self.db, token, now)
        if not user.email_verified or not same_address(user.email, invitation.email):
            raise InvitationEmailMismatch()
        await claim_invitation(self.db, invitation, now)
        existing = await self.memberships.of(invitation.organization_id, user.id)
        if existing is None:
            await self.memberships.add(invitation.organization_id, user.id, invitation.role, now)
        await record_invitation_accepted(self.db, invitation, user.id, self.client.ip)
        org = await self._organization(invitation.organization_id)
        return organization_read(org, existing.role if existing else invitation.role)


def provide_organizations(auth: Auth, caller: Caller, client: NamedDependency[Client]) -> OrganizationService:
    return OrganizationService(auth, caller, client)


DEPENDENCIES = {**AUTH_DEPENDENCIES, "orgs": Provide(provide_organizations, sync_to_thread=False)}
# A handler's ``orgs: Orgs``: the organisation routes' service of the request.
Orgs = NamedDependency[OrganizationService]
NOT_FOUND_OR_ROLE = [OrganizationNotFound, OrgRoleRequired]


class OrganizationController(UserTokenController):
    """The signed-in user's organisations, their members and invitations."""

    path = "/api/v1/auth/orgs"
    tags = ["auth", "organizations"]
    dependencies = DEPENDENCIES

    @post("/", operation_id="create_organization", status_code=HTTP_201_CREATED)
    async def create(self, data: JSONBody[OrganizationCreate], orgs: Orgs) -> OrganizationRead:
        """A new organisation; the caller is its owner (``POST /orgs/{id}/switch`` to act in it)."""
        return await orgs.create(data.name)

    @get("/", operation_id="list_organizations")
    async def mine(self, orgs: Orgs) -> OrganizationList:
        """The organisations the caller belongs to, each with the caller's role."""
        return await orgs.mine()

    @get("/{organization_id:uuid}", operation_id="get_organization", raises=[OrganizationNotFound])
    async def get_one(self, organization_id: FromPath[uuid.UUID], orgs: Orgs) -> OrganizationRead:
        """One of the caller's organisations (404 for any other)."""
        return await orgs.get(organization_id)

    @patch("/{organization_id:uuid}", operation_id="rename_organization", raises=NOT_FOUND_OR_ROLE)
    async def rename(
        self, organization_id: FromPath[uuid.UUID], data: JSONBody[OrganizationRename], orgs: Orgs
    ) -> OrganizationRead:
        """Rename the organisation (owners and admins)."""
        return await orgs.rename(organization_id, data.name)

    @patch(
        "/{organization_id:uuid}/settings",
        operation_id="configure_organization",
        raises=[*NOT_FOUND_OR_ROLE, TwoFactorNotEnabled],
    )
    async def configure(
        self, organization_id: FromPath[uuid.UUID], data: JSONBody[OrganizationSettings], orgs: Orgs
    ) -> OrganizationRead:
        """The owners' settings: ``require_two_factor`` (only an owner with two-factor on may set it)."""
        return await orgs.configure(organization_id, data)

    @post(
        "/{organization_id:uuid}/switch",
        operation_id="switch_organization",
        status_code=HTTP_200_OK,
        raises=[OrganizationNotFound, TwoFactorRequired],
    )
    async def switch(
        self, organization_id: FromPath[uuid.UUID], caller: Caller, auth: Auth, client: NamedDependency[Client]
    ) -> TokenResponse:
        """A new token pair acting in another of the caller's organisations (the current session
        ends); sign-ins start there from now on."""
        return await auth.switch_organization(caller, organization_id, client)

    @delete("/{organization_id:uuid}", operation_id="delete_organization", raises=NOT_FOUND_OR_ROLE)
    async def delete_organization(self, organization_id: FromPath[uuid.UUID], orgs: Orgs) -> None:
        """Delete the organisation (its owners only): memberships, invitations and its service keys
        go with it; its members' access tokens stop working and their refresh gives a token
        without it."""
        await orgs.delete(organization_id)

    @get("/{organization_id:uuid}/members", operation_id="list_members", raises=[OrganizationNotFound])
    async def members(self, organization_id: FromPath[uuid.UUID], orgs: Orgs) -> MemberList:
        """The members and their roles (any member may see them)."""
        return await orgs.members(organization_id)

    @patch(
        "/{organization_id:uuid}/members/{user_id:uuid}",
        operation_id="change_member_role",
        raises=[*NOT_FOUND_OR_ROLE, MemberNotFound, LastOwner],
    )
    async def change_role(
        self, organization_id: FromPath[uuid.UUID], user_id: FromPath[uuid.UUID], data: JSONBody[RoleChange], orgs: Orgs
    ) -> MemberRead:
        """Change a member's role (owners and admins; only an owner grants or takes ``owner``).
        The member's access tokens stop working; their next refresh carries the new role."""
        return await orgs.change_role(organization_id, user_id, data.role)

    @delete(
        "/{organization_id:uuid}/members/{user_id:uuid}",
        operation_id="remove_member",
        raises=[*NOT_FOUND_OR_ROLE, MemberNotFound, LastOwner],
    )
    async def remove(self, organization_id: FromPath[uuid.UUID], user_id: FromPath[uuid.UUID], orgs: Orgs) -> None:
        """Remove a member (owners and admins; an admin never removes an owner); their access
        tokens stop working at once."""
        await orgs.remove(organization_id, user_id)

    @post(
        "/{organization_id:uuid}/leave",
        operation_id="leave_organization",
        status_code=HTTP_204_NO_CONTENT,
        raises=[OrganizationNotFound, LastOwner],
    )
    async def leave(self, organization_id: FromPath[uuid.UUID], orgs: Orgs) -> None:
        """Leave the organisation (its last owner cannot: 409 ``last-owner``)."""
        await orgs.leave(organization_id)

    @post(
        "/{organization_id:uuid}/invitations",
        operation_id="create_invitation",
        status_code=HTTP_201_CREATED,
        raises=[*NOT_FOUND_OR_ROLE, AlreadyMember, TooManyAttempts],
    )
    async def invite(
        self, organization_id: FromPath[uuid.UUID], data: JSONBody[InvitationCreate], orgs: Orgs
    ) -> InvitationRead:
        """Mail an invitation with this role to an address (owners and admins; only owners invite
        owners); 429 ``too-many-attempts`` past ``MAIL_PER_ADDRESS_PER_HOUR`` invitations to the address."""
        return await orgs.invite(organization_id, data)

    @get("/{organization_id:uuid}/invitations", operation_id="list_invitations", raises=NOT_FOUND_OR_ROLE)
    async def invitations(self, organization_id: FromPath[uuid.UUID], orgs: Orgs) -> InvitationList:
        """The pending invitations (owners and admins); tokens are never shown."""
        return await orgs.invitations(organization_id)

    @delete(
        "/{organization_id:uuid}/invitations/{invitation_id:uuid}",
        operation_id="revoke_invitation",
        raises=[*NOT_FOUND_OR_ROLE, InvitationNotFound],
    )
    async def revoke_invitation(
        self, organization_id: FromPath[uuid.UUID], invitation_id: FromPath[uuid.UUID], orgs: Orgs
    ) -> None:
        """Revoke a pending invitation: its link stops working."""
        await orgs.revoke_invitation(organization_id, invitation_id)


class InvitationController(UserTokenController):
    """Accepting an invitation as a signed-in user (a new user registers with it instead)."""

    path = "/api/v1/auth/invitations"
    tags = ["auth", "organizations"]
    dependencies = DEPENDENCIES

    @post(
        "/accept",
        operation_id="accept_invitation",
        status_code=HTTP_200_OK,
        raises=[InvalidInvitation, InvitationEmailMismatch, TooManyAttempts],
    )
    async def accept(self, data: JSONBody[InvitationAccept], orgs: Orgs) -> OrganizationRead:
        """Join the organisation of an invitation sent to the caller's verified address (403
        otherwise); 400 ``invalid-invitation`` when it expired, was revoked or was used."""
        return await orgs.accept(data.token)


class OrganizationServiceKeyController(UserTokenController):
    """An organisation's service keys (``psk_``), managed by its owners and admins: a key's
    token acts in the organisation as a ``member``, within the key's scopes."""

    path = "/api/v1/auth/orgs/{organization_id:uuid}/service-keys"
    tags = ["auth", "organizations", "api-keys"]
    dependencies = {**DEPENDENCIES, **KEY_DEPENDENCIES}

    @post("/", operation_id="create_organization_service_key", status_code=HTTP_201_CREATED, raises=NOT_FOUND_OR_ROLE)
    async def create(
        self,
        organization_id: FromPath[uuid.UUID],
        data: JSONBody[ApiKeyCreate],
        caller: Caller,
        orgs: Orgs,
        api_keys: ApiKeys,
    ) -> ApiKeyCreated:
        """A new service key of the organisation: its secret is in this answer and nowhere else."""
        await orgs.require_manager(organization_id)
        return await api_keys.create(KINDS[SERVICE], None, caller, data, organization_id)

    @get("/", operation_id="list_organization_service_keys", raises=NOT_FOUND_OR_ROLE)
    async def list_keys(self, organization_id: FromPath[uuid.UUID], orgs: Orgs, api_keys: ApiKeys) -> ApiKeyList:
        """The organisation's service keys that are not revoked."""
        await orgs.require_manager(organization_id)
        return await api_keys.listing(KINDS[SERVICE], None, organization_id)

    @delete(
        "/{key_id:uuid}", operation_id="revoke_organization_service_key", raises=[*NOT_FOUND_OR_ROLE, ApiKeyNotFound]
    )
    async def revoke(
        self,
        organization_id: FromPath[uuid.UUID],
        key_id: FromPath[uuid.UUID],
        caller: Caller,
        orgs: Orgs,
        api_keys: ApiKeys,
    ) -> None:
        """Revoke one of the organisation's service keys (every gateway refuses it within 5 s)."""
        await orgs.require_manager(organization_id)
        await api_keys.revoke(KINDS[SERVICE], None, key_id, caller, organization_id)
