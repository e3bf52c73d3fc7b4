"""Auth business logic: no Litestar imports, time from an injected clock."""

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.config import MAX_PASSWORD_LENGTH, AuthSettings
from auth_service.errors import (
    AccountLocked,
    AccountNotFound,
    EmailTaken,
    EmailUnverified,
    InvalidChallenge,
    InvalidCode,
    InvalidCredentials,
    InvalidEmail,
    InvalidGrant,
    InvalidLinkToken,
    InvitationEmailMismatch,
    OrganizationNotFound,
    SessionNotFound,
    SignupClosed,
    TwoFactorEnrolmentRequired,
    TwoFactorRequired,
    WeakPassword,
)
from auth_service.memberships import (
    OWNER,
    Memberships,
    claim_invitation,
    organization_name_for,
    record_invitation_accepted,
    same_address,
    usable_invitation,
)
from auth_service.models import AuthSession, Invitation, OneTimeToken, RefreshToken, User, mail_outbox, outbox
from auth_service.passwords import Passwords
from auth_service.repositories import OneTimeTokenRepository, SessionRepository, UserRepository, committed_account
from auth_service.schemas import (
    EnrolledTokenResponse,
    MfaRequiredResponse,
    SessionRead,
    TokenResponse,
    TwoFactorEnrolment,
    TwoFactorStatus,
    UserRead,
    user_read,
)
from auth_service.throttle import Throttle
from auth_service.tokens import OrgClaim, TokenIssuer, new_refresh_token, refresh_token_hash
from auth_service.two_factor import TwoFactorService
from shared.audit import audit_event, record_audit
from shared.crypto import UserSecretCipher
from shared.db import DirectStatements, read_without_transaction
from shared.events import new_event
from shared.mail import MailTemplates, queue_mail
from shared.outbox import add_event
from shared.security import Identity, RevocationList
from shared.stores import KeyValueStore

logger = logging.getLogger("auth_service")
security_log = logging.getLogger("auth_service.security")
Clock = Callable[[], datetime]
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s.\x00-\x1f\x7f]+$")
PASSWORD_RESET = "password-reset"  # noqa: S105 - a token purpose, not a secret
VERIFY_EMAIL = "verify-email"
# The challenge between a right password and the second factor: a one-time token, single use.
MFA_LOGIN = "mfa-login"
MFA_LOGIN_LEGACY = "mfa-login-legacy"  # the session then asked for the older platform's lifetime
# The challenge of a sign-in refused until the user enrols the second factor their organisation requires.
MFA_ENROL = "mfa-enrol"
# An anonymous request for a mail is answered before anyone looks the address up: the request only
# records it (the same work whether or not an account has the address), and the service's own
# consumer of these events makes the token and the mail, once per event.
PASSWORD_RESET_REQUESTED = "auth.password_reset_requested"  # noqa: S105 - an event type, not a secret
VERIFICATION_REQUESTED = "auth.verification_requested"
MAIL_TEMPLATES = MailTemplates("auth_service")


class Client(msgspec.Struct, frozen=True):
    """Where a request came from."""

    ip: str
    user_agent: str | None = None


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidEmail()
    return email


async def signed_in_account(direct: DirectStatements, identity: Identity) -> UserRead:
    """The caller's account as committed, read outside any session (``GET /auth/me``, the hottest
    read): a closed or deleted account's token is refused as at a refresh."""
    account = await committed_account(direct, identity.user_id)
    if account is None or not account["is_active"]:
        raise InvalidGrant()
    return msgspec.convert(account, UserRead)


class AuthService:
    def __init__(
        self,
        db: AsyncSession,
        settings: AuthSettings,
        passwords: Passwords,
        issuer: TokenIssuer,
        throttle: Throttle,
        revocations: RevocationList,
        store: KeyValueStore,
        clock: Clock,
        totp_cipher: UserSecretCipher | None = None,
        client: Client | None = None,
    ) -> None:
        self.db = db
        self.client_ip = client.ip if client else None  # what audit entries say the request came from
        self.users = UserRepository(db)
        self.sessions = SessionRepository(db)
        self.tokens = OneTimeTokenRepository(db)
        self.settings = settings
        self.passwords = passwords
        self.issuer = issuer
        self.throttle = throttle
        self.revocations = revocations
        self.store = store
        self.clock = clock
        self.two_factor = TwoFactorService(db, settings, throttle, totp_cipher)
        self.memberships = Memberships(db)
        # The transaction in which ``_lock_active`` locked which account's row (held to its end).
        self._locked: tuple[object, uuid.UUID] | None = None

    # -- accounts ------------------------------------------------------------------------

    async def register(
        self,
        email: str,
        password: str,
        first_name: str | None,
        last_name: str | None,
        client: Client,
        legacy_lifetime: bool = False,
        invitation: str | None = None,
    ) -> TokenResponse | None:
        """A new account, signed in; None (and a mail) when addresses must be verified first.

        With REQUIRE_VERIFIED_EMAIL a taken address gets the same answer, at the same cost (one
        password hash), and its owner a mail, so registering tells nobody who has an account.
        The account founds its own organisation, or with ``invitation`` (the mailed token) joins
        the inviting one, its address verified by the mail.
        """
        await self.throttle.check_ip("register", client.ip)
        email = normalise_email(email)
        self.check_password_policy(password, email)
        invited = await self._invitation_for(invitation, email, client) if invitation else None
        if invited is None and not self._signup_open_to(email):
            raise SignupClosed()
        hidden = self.settings.require_verified_email and invited is None
        if hidden:
            await self.throttle.check_address("register", email)
        if await self.users.by_email(email) is not None:
            if not hidden:
                raise EmailTaken()
            await self.passwords.hash(password)
            await self._send("account_exists", email, email=email, link=self._link("/forgot-password", None))
            security_log.info("registration with a taken address: owner told", extra={"ip": client.ip})
            return None
        now = self.clock()
        user = await self._new_user(email, password, first_name, last_name, invited is not None, now)
        await self._add_account(user, invited.organization_id if invited else None, now)
        if invited is None:
            await self._mail_token(user, VERIFY_EMAIL, email, "verify_email")
        else:
            await claim_invitation(self.db, invited, now)
            await self.memberships.add(invited.organization_id, user.id, invited.role, now)
            await record_invitation_accepted(self.db, invited, user.id, client.ip)
        logger.info("user registered", extra={"user_id": str(user.id), "ip": client.ip})
        if hidden:
            return None
        organization = await self._sign_in_organization(user)
        return await self._start_session(user, client, now, legacy_lifetime, organization)

    async def _new_user(
        self,
        email: str,
        password: str,
        first_name: str | None,
        last_name: str | None,
        email_verified: bool,
        now: datetime,
    ) -> User:
        """An active account with the ``user`` role, its password hashed (stored by ``_add_account``)."""
        return User(
            id=uuid.uuid4(),
            email=email,
            password_hash=await self.passwords.hash(password),
            first_name=_clean_name(first_name),
            last_name=_clean_name(last_name),
            roles=["user"],
            tenant_id=None,
            is_active=True,
            email_verified=email_verified,
            created_at=now,
            updated_at=now,
        )

    async def _add_account(self, user: User, joining: uuid.UUID | None, now: datetime) -> None:
        """Store a new account with its first organisation (``joining``, else one it founds):
        ``user.registered`` is published before the membership's event, so the users service
        knows the user when it hears of the membership."""
        org_id = joining or (await self.memberships.new_organization(organization_name_for(user), now)).id
        user.tenant_id = org_id
        try:
            await self.users.add(user)
        except IntegrityError:
            raise EmailTaken() from None
        await add_event(self.db, outbox, new_event("user.registered", "auth", user_event_data(user)))
        if joining is None:
            await self.memberships.add(org_id, user.id, OWNER, now)

    async def _invitation_for(self, token: str, email: str, client: Client) -> Invitation:
        await self.throttle.check_ip("invitation", client.ip)
        invited = await usable_invitation(self.db, token, self.clock())
        if not same_address(invited.email, email):
            raise InvitationEmailMismatch()
        return invited

    def _signup_open_to(self, email: str) -> bool:
        """SIGNUP_MODE: open to all, to invitations only, or to the addresses of SIGNUP_DOMAINS."""
        mode = self.settings.signup_mode
        if mode == "open":
            return True
        if mode == "domains":
            return email.rpartition("@")[2] in self.settings.signup_domain_set
        return False

    async def create_account(
        self, admin: Identity, email: str, password: str, first_name: str | None, last_name: str | None
    ) -> User:
        """A platform administrator creates an account, whatever SIGNUP_MODE says; it founds its
        own organisation and its address gets a verification link, as a registration's does."""
        email = normalise_email(email)
        self.check_password_policy(password, email)
        if await self.users.by_email(email) is not None:
            raise EmailTaken()
        now = self.clock()
        user = await self._new_user(email, password, first_name, last_name, False, now)
        await self._add_account(user, None, now)
        await self._mail_token(user, VERIFY_EMAIL, email, "verify_email")
        security_log.info(
            "account created by an administrator", extra={"user_id": str(user.id), "admin_id": str(admin.user_id)}
        )
        return user

    def check_password_policy(self, password: str, email: str) -> None:
        if len(password) < self.settings.password_min_length:
            raise WeakPassword(f"The password must be at least {self.settings.password_min_length} characters long.")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise WeakPassword(f"The password must be at most {MAX_PASSWORD_LENGTH} characters long.")
        if password.strip().lower() == email:
            raise WeakPassword("The password must not be the email address.")

    async def login(
        self, email: str, password: str, client: Client, legacy_lifetime: bool = False
    ) -> TokenResponse | MfaRequiredResponse:
        """Tokens for the right password; with two-factor on, a challenge for ``login_mfa`` instead."""
        await self.throttle.check_ip("login", client.ip)
        email = email.strip().lower()
        await read_without_transaction(self.db)  # ``_verify_login`` ends it before the hash anyway
        user = await self.users.by_email(email)
        user_id = str(user.id) if user else None
        try:
            ok = await self._verify_login(email, user, password)
        except AccountLocked:
            security_log.info(
                "login refused: account locked", extra={"user_id": user_id, "ip": client.ip, "outcome": "locked"}
            )
            raise
        if not ok or user is None:
            security_log.info("login failed", extra={"user_id": user_id, "ip": client.ip, "outcome": "failure"})
            # An unknown address is recorded without a target: never the address itself.
            await self._audit("login.failed", actor_id=None, **_about(user))
            await self.db.commit()  # the failure's audit entries must stand although the request fails
            raise InvalidCredentials()
        if self.settings.require_verified_email and not user.email_verified:
            security_log.info("login refused: email unverified", extra={"user_id": user_id, "ip": client.ip})
            raise EmailUnverified()
        now = self.clock()
        if self.passwords.needs_rehash(user.password_hash):
            user.password_hash = await self.passwords.hash(password)
        if await self.two_factor.enabled(user.id):
            security_log.info("login: second factor asked", extra={"user_id": user_id, "ip": client.ip})
            return await self._mfa_challenge(user, now, legacy_lifetime)
        organization = await self.memberships.sign_in_organization(user)
        if organization is not None and await self._requires_two_factor(organization[0]):
            security_log.info("login: two-factor enrolment required", extra={"user_id": user_id, "ip": client.ip})
            challenge = await self._new_one_time_token(
                user, MFA_ENROL, user.email, self.settings.mfa_challenge_ttl, now
            )
            raise TwoFactorEnrolmentRequired(challenge, self.settings.mfa_challenge_ttl)
        # Without two-factor on, ``organization`` is what ``_sign_in_organization`` would answer.
        return await self._signed_in(user, client, now, legacy_lifetime, organization)

    async def _signed_in(
        self, user: User, client: Client, now: datetime, legacy_lifetime: bool, organization: OrgClaim | None
    ) -> TokenResponse:
        """A new session in ``organization`` (read in this transaction, as ``_sign_in_organization`` does)."""
        user.last_login_at = now
        logged_in = new_event("user.logged_in", "auth", user_event_data(user))
        audited = audit_event("auth", "login.succeeded", actor_id=user.id, ip=self.client_ip, **_about(user))
        await add_event(self.db, outbox, logged_in, audited)  # one INSERT: a sign-in's every statement counts
        security_log.info("login succeeded", extra={"user_id": str(user.id), "ip": client.ip, "outcome": "success"})
        return await self._start_session(user, client, now, legacy_lifetime, organization)

    async def _requires_two_factor(self, organization_id: uuid.UUID) -> bool:
        org = await self.memberships.organization(organization_id)
        return org is not None and org.require_two_factor

    async def _sign_in_organization(self, user: User) -> OrgClaim | None:
        """Where a new session acts: the organisation last made active, else the oldest; none when
        it requires two-factor sign-in and the user has not turned it on."""
        organization = await self.memberships.sign_in_organization(user)
        if organization is None:
            return None
        if await self._requires_two_factor(organization[0]) and not await self.two_factor.enabled(user.id):
            return None
        return organization

    # -- two-factor ----------------------------------------------------------------------

    async def _mfa_challenge(self, user: User, now: datetime, legacy_lifetime: bool) -> MfaRequiredResponse:
        ttl = self.settings.mfa_challenge_ttl
        purpose = MFA_LOGIN_LEGACY if legacy_lifetime else MFA_LOGIN
        challenge = await self._new_one_time_token(user, purpose, user.email, ttl, now)
        return MfaRequiredResponse(challenge=challenge, expires_in=ttl)

    async def login_mfa(self, challenge: str, code: str, client: Client) -> TokenResponse | EnrolledTokenResponse:
        """The second step of a sign-in: the challenge of a right password and a code, once each.
        With the challenge of a required enrolment, the code confirms the new authenticator and
        the answer adds its recovery codes."""
        await self.throttle.check_ip("login", client.ip)
        now = self.clock()
        found, user = await self._challenged(challenge, (MFA_LOGIN, MFA_LOGIN_LEGACY, MFA_ENROL), now)
        if found.purpose == MFA_ENROL:
            codes = await self.two_factor.confirm(user, code, now)
            await self._audit("two_factor.enabled", actor_id=user.id, **_about(user))
            await self._consume_challenge(found, now)
            tokens = await self._signed_in(user, client, now, False, await self._sign_in_organization(user))
            return EnrolledTokenResponse(**msgspec.structs.asdict(tokens), recovery_codes=codes)
        try:
            await self.two_factor.check_code(user, code, now)
        except InvalidCode:
            await self._audit("login.mfa_failed", actor_id=None, **_about(user))
            await self.db.commit()  # as for a wrong password: the entry stands although the request fails
            raise
        await self._consume_challenge(found, now)
        legacy = found.purpose == MFA_LOGIN_LEGACY
        return await self._signed_in(user, client, now, legacy, await self._sign_in_organization(user))

    async def enrol_at_login(self, challenge: str, client: Client) -> TwoFactorEnrolment:
        """An authenticator for a user whose organisation requires one, with the challenge of the
        refused sign-in; ``login_mfa`` with a code of it confirms it and signs in."""
        await self.throttle.check_ip("login", client.ip)
        _, user = await self._challenged(challenge, (MFA_ENROL,), self.clock())
        return await self.two_factor.enrol(user, self.clock())

    async def _challenged(self, challenge: str, purposes: tuple[str, ...], now: datetime) -> tuple[OneTimeToken, User]:
        found = await self.tokens.usable(refresh_token_hash(challenge), purposes, now)
        user = await self.users.by_id(found.user_id) if found is not None else None
        if found is None or user is None or not user.is_active or found.email != user.email:
            raise InvalidChallenge()
        return found, user

    async def _consume_challenge(self, found: OneTimeToken, now: datetime) -> None:
        if not await self.tokens.consume(found.id, now):
            raise InvalidChallenge()

    async def two_factor_status(self, identity: Identity) -> TwoFactorStatus:
        user = await self._active_user(identity)
        return await self.two_factor.status(user.id)

    async def enrol_two_factor(self, identity: Identity, password: str) -> TwoFactorEnrolment:
        """A new authenticator secret for the signed-in user, who re-enters the password: a stolen
        access token alone cannot put the attacker's authenticator on the account."""
        user = await self._active_user(identity)
        await self._prove_password(user, password)
        return await self.two_factor.enrol(user, self.clock())

    async def confirm_two_factor(self, identity: Identity, code: str) -> list[str]:
        user = await self._active_user(identity)
        codes = await self.two_factor.confirm(user, code, self.clock())
        await self._audit("two_factor.enabled", actor_id=user.id, **_about(user, identity))
        return codes

    async def renew_recovery_codes(self, identity: Identity, password: str, code: str) -> list[str]:
        user = await self._active_user(identity)
        await self._prove_password(user, password)
        return await self.two_factor.renew_recovery_codes(user, code, self.clock())

    async def disable_two_factor(self, identity: Identity, password: str, code: str) -> None:
        user = await self._active_user(identity)
        await self._prove_password(user, password)
        await self.two_factor.disable(user, code, self.clock())
        await self._audit("two_factor.disabled", actor_id=user.id, **_about(user, identity))
        await self._send("two_factor_off", user.email, how="by you")

    async def reset_two_factor(self, admin: Identity, user_id: uuid.UUID) -> None:
        """An administrator turns a user's two-factor off (a lost authenticator and recovery codes);
        the account's address is told, as it is when the user turns it off."""
        user = await self.users.by_id(user_id)
        if user is None:
            raise AccountNotFound()
        removed = await self.two_factor.reset(user_id)
        if removed:  # the owner hears of it, whoever did it
            await self._audit("two_factor.reset", actor_id=admin.user_id, **_about(user))
            await self._send("two_factor_off", user.email, how="by an administrator")
        security_log.info(
            "two-factor reset by an administrator",
            extra={"user_id": str(user_id), "admin_id": str(admin.user_id), "removed": removed},
        )

    # -- passwords -----------------------------------------------------------------------

    async def change_password(self, identity: Identity, current: str, new: str) -> None:
        user = await self._active_user(identity)
        await self._prove_password(user, current)
        self.check_password_policy(new, user.email)
        now = self.clock()
        user.password_hash = await self.passwords.hash(new)
        user.password_changed_at = now
        await self.tokens.void_unused(user.id, PASSWORD_RESET, now)
        others = [s.id for s in await self.sessions.active_for_user(user.id, now) if str(s.id) != identity.session_id]
        await self._audit("password.changed", actor_id=user.id, **_about(user, identity))
        await self._audit_all_revoked(user.id, _about(user, identity), "password_changed", others)
        await self._revoke_sessions(others, now)
        security_log.info("password changed", extra={"user_id": str(user.id), "revoked_sessions": len(others)})

    async def change_email(self, identity: Identity, current_password: str, new_email: str) -> User:
        """Ask to move the account to another address (the password proves it is the owner): the
        new address gets a link, and the change takes effect when it is opened (``verify_email``)."""
        user = await self._active_user(identity)
        await self._prove_password(user, current_password)
        email = normalise_email(new_email)
        if email == user.email:
            return user
        if await self.users.by_email(email) is not None:
            raise EmailTaken()
        await self._mail_token(user, VERIFY_EMAIL, email, "confirm_new_email")
        await self._audit("email.change_requested", actor_id=user.id, **_about(user, identity))
        security_log.info("email change asked: new address to confirm", extra={"user_id": str(user.id)})
        return user

    # -- mailed tokens: password reset and address verification ---------------------------

    async def forgot_password(self, email: str, client: Client) -> None:
        """Ask for a reset link to the address (``send_password_reset``); the caller learns nothing."""
        await self._request_mail("forgot", PASSWORD_RESET_REQUESTED, email, client)
        security_log.info("password reset asked", extra={"ip": client.ip})

    async def send_password_reset(self, email: str) -> None:
        """Mail a reset link if an active account has the address."""
        user = await self.users.by_email(email)
        if user is None or not user.is_active:
            return
        await self._mail_token(user, PASSWORD_RESET, user.email, "password_reset")
        security_log.info("password reset link mailed", extra={"user_id": str(user.id)})

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password with a mailed token; every session and access token ends."""
        now = self.clock()
        user, reset = await self._redeemable(token, PASSWORD_RESET, now)
        if reset.email != user.email:
            raise InvalidLinkToken()
        self.check_password_policy(new_password, user.email)
        await self._consume(reset, now)
        user.password_hash = await self.passwords.hash(new_password)
        user.password_changed_at = user.updated_at = now
        await self.tokens.void_unused(user.id, PASSWORD_RESET, now)
        if not user.email_verified:  # the link came to the address: it is the owner's
            user.email_verified = True
            await add_event(self.db, outbox, new_event("user.email_verified", "auth", user_event_data(user)))
        await self.throttle.succeeded(user.email)
        # Revoking every session revokes every access token too: each carries its session id. Last:
        # with Redis down it raises RevocationIncomplete, and what is above stands (committed).
        sessions = [s.id for s in await self.sessions.active_for_user(user.id, now)]
        await self._audit("password.reset", actor_id=user.id, **_about(user))
        await self._audit_all_revoked(user.id, _about(user), "password_reset", sessions)
        await self._revoke_sessions(sessions, now)
        security_log.info("password reset", extra={"user_id": str(user.id), "revoked_sessions": len(sessions)})

    async def verify_email(self, token: str) -> User:
        """Confirm the address a mailed token was sent to: the account's own, or the new one it
        asked to move to (which then takes effect, and the old address is told)."""
        now = self.clock()
        user, verification = await self._redeemable(token, VERIFY_EMAIL, now)
        previous = user.email
        if verification.email != previous and await self.users.by_email(verification.email) is not None:
            raise EmailTaken()
        await self._consume(verification, now)
        user.email, user.email_verified, user.updated_at = verification.email, True, now
        try:
            await self.db.flush()
        except IntegrityError:
            raise EmailTaken() from None
        if previous == user.email:
            await add_event(self.db, outbox, new_event("user.email_verified", "auth", user_event_data(user)))
            security_log.info("email verified", extra={"user_id": str(user.id)})
            return user
        data = {**user_event_data(user), "previous_email": previous}
        await add_event(self.db, outbox, new_event("user.email_changed", "auth", data))
        await self._audit("email.changed", actor_id=user.id, **_about(user))  # never the addresses
        await self._send("email_changed", previous, new_email=user.email)
        security_log.info("email changed", extra={"user_id": str(user.id)})
        return user

    async def resend_verification(self, email: str, client: Client) -> None:
        """Ask for a new verification link (``send_verification``); the caller learns nothing."""
        await self._request_mail("resend", VERIFICATION_REQUESTED, email, client)

    async def _request_mail(self, action: str, event_type: str, email: str, client: Client) -> None:
        """Record an anonymous request for a mail to ``email`` (throttled by address and client), for
        this service's consumer of ``event_type`` to act on: the answer is the same whether or not
        an account has the address."""
        await self.throttle.check_ip(action, client.ip)
        email = normalise_email(email)
        await self.throttle.check_address(action, email)
        await add_event(self.db, outbox, new_event(event_type, "auth", {"email": email}))

    async def send_verification(self, email: str) -> None:
        """A new verification link for an unverified account with the address."""
        user = await self.users.by_email(email)
        if user is None or not user.is_active or user.email_verified:
            return
        await self._mail_token(user, VERIFY_EMAIL, user.email, "verify_email")

    async def _redeemable(self, token: str, purpose: str, now: datetime) -> tuple[User, OneTimeToken]:
        found = await self.tokens.usable(refresh_token_hash(token), (purpose,), now)
        user = await self.users.by_id(found.user_id) if found is not None else None
        if found is None or user is None or not user.is_active:
            raise InvalidLinkToken()
        return user, found

    async def _consume(self, token: OneTimeToken, now: datetime) -> None:
        if not await self.tokens.consume(token.id, now):
            raise InvalidLinkToken()

    async def _mail_token(self, user: User, purpose: str, email: str, template: str) -> None:
        """A new token for ``purpose`` (older unused ones become void), mailed to ``email`` as a link."""
        now = self.clock()
        ttl = self.settings.password_reset_ttl if purpose == PASSWORD_RESET else self.settings.email_verification_ttl
        await self.tokens.void_unused(user.id, purpose, now)
        secret = await self._new_one_time_token(user, purpose, email, ttl, now)
        page = "/reset-password" if purpose == PASSWORD_RESET else "/verify-email"
        await self._send(template, email, email=email, link=self._link(page, secret), valid_for=_in_words(ttl))

    async def _new_one_time_token(self, user: User, purpose: str, email: str, ttl: int, now: datetime) -> str:
        """A single-use token for ``purpose`` proving ``email``, valid ``ttl`` seconds; only its hash is kept."""
        secret = new_refresh_token()
        await self.tokens.add(
            OneTimeToken(
                id=uuid.uuid4(),
                user_id=user.id,
                purpose=purpose,
                token_hash=refresh_token_hash(secret),
                email=email,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )
        )
        return secret

    def _link(self, page: str, token: str | None) -> str:
        return self.settings.site_url.rstrip("/") + page + (f"?token={token}" if token else "")

    async def _send(self, template: str, to: str, **values: str) -> None:
        await queue_mail(self.db, mail_outbox, MAIL_TEMPLATES.render(template, to, **values), self.clock())

    async def update_account(
        self, admin: Identity, user_id: uuid.UUID, roles: list[str] | None, is_active: bool | None
    ) -> User:
        """An administrator changes an account's roles or (de)activates it; its sessions end."""
        user = await self.users.by_id(user_id)
        if user is None:
            raise AccountNotFound()
        now = self.clock()
        changed: dict[str, Any] = {}  # the audit entry's details: the fields set, and to what
        if roles is not None:
            user.roles = changed["roles"] = sorted(set(roles))
        if is_active is not None:
            user.is_active = changed["is_active"] = is_active
        user.updated_at = now
        details = {"fields": list(changed), **changed}
        await self._audit("account.updated", actor_id=admin.user_id, **_about(user), details=details)
        # Tokens carry the roles: every session signs in again and gets the new ones.
        sessions = [s.id for s in await self.sessions.active_for_user(user.id, now)]
        await self._audit_all_revoked(admin.user_id, _about(user), "account_updated", sessions)
        await self._revoke_sessions(sessions, now)
        await add_event(self.db, outbox, new_event("user.account_changed", "auth", user_event_data(user)))
        security_log.info(
            "account changed by an administrator",
            extra={"user_id": str(user.id), "admin_id": str(admin.user_id), "roles": user.roles},
        )
        return user

    async def deactivate_deleted_user(self, user_id: uuid.UUID) -> None:
        """``user.deleted``: the credentials stop working, every session ends, and every access
        token issued so far is refused (the per-user cut-off the gateway checks)."""
        now = self.clock()
        user = await self.users.by_id(user_id)
        if user is not None:
            user.is_active = False
            user.updated_at = now
            # The row is locked from here to the commit: a sign-in or refresh waits for it, then
            # finds the account closed (``_lock_active``). One that finished before took its tokens
            # by now, so the cut-off comes after the lock: once a token is refused, so is a sign-in.
            await self.db.flush()
        await self.revoke_user_access(user_id)
        if user is not None:
            sessions = [s.id for s in await self.sessions.active_for_user(user_id, now)]
            await self._audit_all_revoked(None, _about(user), "account_deleted", sessions)
            await self._revoke_sessions(sessions, now)
        security_log.info("account deactivated: profile deleted", extra={"user_id": str(user_id)})

    async def me(self, identity: Identity) -> User:
        return await self._active_user(identity)

    async def _verify_login(self, email: str, user: User | None, password: str) -> bool:
        """Unknown emails are verified against a dummy hash: they cost and answer like real ones.

        Callers have written nothing yet: the read-only transaction ends here, so the database
        connection goes back to the pool while the hash is computed (25 requests at once would
        otherwise hold the pool through their hashes and starve every other request)."""
        await self.db.commit()
        async with self.throttle.verification(email) as attempt:
            if user is None:
                await self.passwords.verify_dummy(password)
                return False
            ok = await self.passwords.verify(user.password_hash, password) and await self._lock_active(user)
            if ok:
                await self.throttle.succeeded(email)
            elif attempt.locks_account:  # the caller commits it with the failure
                await self._audit("login.locked", actor_id=None, **_about(user))
            return ok

    async def _prove_password(self, user: User, password: str) -> None:
        """A signed-in (so active) user re-enters the password: throttled like a login to the account."""
        if not await self._verify_login(user.email, user, password):
            # A lock's audit entry stands although the request fails (callers change nothing before).
            await self.db.commit()
            raise InvalidCredentials()

    async def _lock_active(self, user: User) -> bool:
        """Whether the account is still open, read again under the row's lock, held until the
        commit: the password was checked against a read that the account's closing
        (``deactivate_deleted_user``) may have overtaken since, and no token may outlive it.
        Once locked in a transaction, the answer stands to its end (a sign-in asks twice)."""
        transaction = self.db.sync_session.get_transaction()
        if transaction is not None and self._locked == (transaction, user.id):
            return True
        if not await self.users.lock_is_active(user):
            return False
        self._locked = (self.db.sync_session.get_transaction(), user.id)  # None in autocommit: no lock held
        return True

    async def _active_user(self, identity: Identity) -> User:
        user = await self.users.by_id(identity.user_id)
        if user is None or not user.is_active:
            raise InvalidGrant()
        return user

    async def _audit(self, action: str, **fields: Any) -> None:
        """An audit entry in the current transaction, with the address of the request's client."""
        await record_audit(self.db, outbox, "auth", action, ip=self.client_ip, **fields)

    async def _audit_revoked(
        self,
        actor_id: uuid.UUID | None,
        organization_id: str | uuid.UUID | None,
        session_id: uuid.UUID,
        **details: str,
    ) -> None:
        """``session.revoked``: one session ends, by its user's hand (or, without an actor, the service's)."""
        await self._audit(
            "session.revoked",
            actor_id=actor_id,
            organization_id=organization_id,
            target_type="session",
            target_id=session_id,
            details=details,
        )

    async def _audit_all_revoked(
        self, actor_id: uuid.UUID | None, about: dict[str, Any], cause: str, sessions: list[uuid.UUID]
    ) -> None:
        """``sessions.revoked_all``: every (other) session of an account ends; why, and how many
        (none: nothing to record)."""
        if not sessions:
            return
        details = {"cause": cause, "sessions": len(sessions)}
        await self._audit("sessions.revoked_all", actor_id=actor_id, **about, details=details)

    # -- sessions and tokens -------------------------------------------------------------

    async def _start_session(
        self,
        user: User,
        client: Client,
        now: datetime,
        legacy_lifetime: bool = False,
        organization: OrgClaim | None = None,
    ) -> TokenResponse:
        """A new session acting in ``organization`` (none: in no organisation)."""
        auth_session = AuthSession(
            id=uuid.uuid4(),
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=now + timedelta(seconds=self.settings.refresh_absolute_ttl),
            user_agent=(client.user_agent or "")[:512] or None,
            ip=client.ip,
            access_token_ttl=self.settings.legacy_token_ttl if legacy_lifetime else None,
            organization_id=organization[0] if organization else None,
        )
        refresh = new_refresh_token()
        token = RefreshToken(
            id=uuid.uuid4(), session_id=auth_session.id, token_hash=refresh_token_hash(refresh), created_at=now
        )
        await self.sessions.add(auth_session, token)
        return await self._token_response(user, auth_session, refresh, now, organization)

    async def _acting_organization(self, auth_session: AuthSession) -> OrgClaim | None:
        """The session's organisation with the role the membership has now: a member removed
        since acts in none, a changed role with the new one."""
        role = await self.memberships.role(auth_session.organization_id, auth_session.user_id)
        if auth_session.organization_id is None or role is None:
            auth_session.organization_id = None
            return None
        return auth_session.organization_id, role

    async def _token_response(
        self, user: User, auth_session: AuthSession, refresh: str, now: datetime, organization: OrgClaim | None
    ) -> TokenResponse:
        """A pair acting in ``organization`` (read in this transaction); none for an account
        closed meanwhile (``_lock_active``)."""
        if not await self._lock_active(user):
            raise InvalidGrant()
        issued = await self._after_access_cutoff(user.id, now)
        access, ttl = self.issuer.access_token(
            user, auth_session.id, issued, auth_session.access_token_ttl, organization
        )
        return TokenResponse(user=user_read(user), access_token=access, refresh_token=refresh, expires_in=ttl)

    async def _session_of(self, identity: Identity) -> AuthSession | None:
        try:
            session_id = uuid.UUID(identity.session_id or "")
        except ValueError:
            return None  # a token without a session of this service's
        return await self.sessions.by_id(session_id)

    async def _after_access_cutoff(self, user_id: uuid.UUID, now: datetime) -> datetime:
        """When the user's access tokens were just cut off (a changed role, a removal), a new one is
        issued after the cut-off's second: the cut-off refuses every token issued up to and
        including it, and a refresh within that second must give a usable token."""
        try:
            cutoff = await self.revocations.user_cutoff(user_id)
        except (RedisError, OSError):
            return now  # the gateway cannot read the cut-off either
        if cutoff is None:
            return now
        return max(now, datetime.fromtimestamp(cutoff + 1, UTC))

    async def switch_organization(
        self, identity: Identity, organization_id: uuid.UUID, client: Client
    ) -> TokenResponse:
        """A new session acting in another of the user's organisations; the current one ends.
        An organisation the user does not belong to is not found, whether or not it exists."""
        user = await self._active_user(identity)
        role = await self.memberships.role(organization_id, user.id)
        if role is None:
            raise OrganizationNotFound()
        org = await self.memberships.organization(organization_id)
        if org is not None and org.require_two_factor and not await self.two_factor.enabled(user.id):
            raise TwoFactorRequired()
        now = self.clock()
        current = await self._session_of(identity)
        legacy = current is not None and current.access_token_ttl is not None
        user.tenant_id = organization_id
        tokens = await self._start_session(user, client, now, legacy, (organization_id, role))
        await record_audit(
            self.db,
            outbox,
            "auth",
            "org.switched",
            actor_id=user.id,
            organization_id=organization_id,
            target_type="organization",
            target_id=organization_id,
            ip=client.ip,
        )
        if current is not None and current.user_id == user.id:
            await self._revoke_sessions([current.id], now)
        return tokens

    async def refresh(self, refresh: str) -> TokenResponse:
        token = await self.sessions.token_by_hash(refresh_token_hash(refresh))
        if token is None:
            raise InvalidGrant()
        now = self.clock()
        if token.rotated_at is not None:
            return await self._reused(token, refresh, now)
        family = token.session
        # The account's row is locked before anything else is written: the order the account's
        # closing takes too (the user, then the sessions), so the two never deadlock.
        if not self._usable(family, now) or not await self._lock_active(family.user):
            raise InvalidGrant()
        if not await self.sessions.claim_for_rotation(token.id, now):
            token = await self.sessions.token_by_hash(refresh_token_hash(refresh))
            assert token is not None and token.rotated_at is not None
            return await self._reused(token, refresh, now)
        family.last_used_at = now
        successor = new_refresh_token()
        await self.sessions.add_token(
            RefreshToken(
                id=uuid.uuid4(), session_id=family.id, token_hash=refresh_token_hash(successor), created_at=now
            )
        )
        organization = await self._acting_organization(family)
        response = await self._token_response(family.user, family, successor, now, organization)
        await self._remember_for_grace(refresh, response)
        return response

    def _usable(self, family: AuthSession, now: datetime) -> bool:
        idle_deadline = family.last_used_at + timedelta(seconds=self.settings.refresh_idle_ttl)
        return family.revoked_at is None and now < family.expires_at and now < idle_deadline and family.user.is_active

    async def _reused(self, token: RefreshToken, refresh: str, now: datetime) -> TokenResponse:
        """A rotated token came back: the same new pair within the grace window, else theft."""
        assert token.rotated_at is not None
        if (now - token.rotated_at).total_seconds() <= self.settings.refresh_reuse_grace:
            cached = await self._recall_from_grace(refresh)
            if cached is not None:
                return cached
            raise InvalidGrant()
        family = token.session
        await self._audit_revoked(None, family.user.tenant_id, family.id, cause="refresh_token_reuse")
        await self._revoke_sessions([family.id], now)
        await self.db.commit()  # the revocation (and its audit entry) must stand although the request fails
        security_log.warning(
            "refresh token reuse: session family revoked",
            extra={"user_id": str(family.user_id), "session_id": str(family.id), "outcome": "reuse-detected"},
        )
        raise InvalidGrant()

    async def _remember_for_grace(self, refresh: str, response: TokenResponse) -> None:
        """Keep the new pair for the grace window, encrypted under a key only the old token gives."""
        if self.settings.refresh_reuse_grace <= 0:
            return
        nonce = os.urandom(12)
        sealed = AESGCM(_grace_key(refresh)).encrypt(nonce, msgspec.json.encode(response), None)
        await self.store.set(_grace_slot(refresh), nonce + sealed, self.settings.refresh_reuse_grace)

    async def _recall_from_grace(self, refresh: str) -> TokenResponse | None:
        sealed = await self.store.get(_grace_slot(refresh))
        if sealed is None:
            return None
        try:
            plain = AESGCM(_grace_key(refresh)).decrypt(sealed[:12], sealed[12:], None)
        except InvalidTag:
            return None
        return msgspec.json.decode(plain, type=TokenResponse)

    async def logout(self, identity: Identity, refresh: str | None, scope: str) -> None:
        now = self.clock()
        if scope == "global":
            sessions = [s.id for s in await self.sessions.active_for_user(identity.user_id, now)]
            await self._audit_all_revoked(identity.user_id, _about(None, identity), "logout", sessions)
            # Revoking every session also revokes every access token (they carry their session id),
            # while a sign-in right after still works.
            await self._revoke_sessions(sessions, now)
        else:
            targets = [uuid.UUID(identity.session_id)] if identity.session_id else []
            if refresh:
                token = await self.sessions.token_by_hash(refresh_token_hash(refresh))
                if token is not None and token.session.user_id == identity.user_id:
                    targets.append(token.session_id)
            for session_id in dict.fromkeys(targets):  # the token's session is often the bearer's
                await self._audit_revoked(identity.user_id, identity.tenant_id, session_id)
            await self._revoke_sessions(targets, now)
        # Last: with Redis down it raises, and the sessions above must be revoked in the database first.
        await self.revocations.revoke_token(self.settings.jwt_issuer, identity.jti, identity.expires_at)
        security_log.info("logout", extra={"user_id": str(identity.user_id), "scope": scope})

    async def revoke_refresh_token(self, refresh: str) -> None:
        """RFC 7009: the session the refresh token belongs to ends; an unknown token is no error."""
        token = await self.sessions.token_by_hash(refresh_token_hash(refresh))
        if token is None:
            return
        owner = token.session.user
        await self._audit_revoked(owner.id, owner.tenant_id, token.session_id)
        await self._revoke_sessions([token.session_id], self.clock())
        security_log.info("logout by refresh token", extra={"user_id": str(token.session.user_id), "scope": "local"})

    async def list_sessions(self, identity: Identity) -> list[SessionRead]:
        sessions = await self.sessions.active_for_user(identity.user_id, self.clock())
        return [
            SessionRead(
                id=s.id,
                created_at=s.created_at,
                last_used_at=s.last_used_at,
                expires_at=s.expires_at,
                user_agent=s.user_agent,
                ip=s.ip,
                current=str(s.id) == identity.session_id,
            )
            for s in sessions
        ]

    async def revoke_session(self, identity: Identity, session_id: uuid.UUID) -> None:
        target = await self.sessions.by_id(session_id)
        if target is None or target.user_id != identity.user_id or target.revoked_at is not None:
            raise SessionNotFound()
        await self._audit_revoked(identity.user_id, identity.tenant_id, target.id)
        await self._revoke_sessions([target.id], self.clock())

    async def revoke_user_access(self, user_id: uuid.UUID) -> None:
        """Every access token the user holds stops working at once (the per-user cut-off the gateway
        checks): a changed role or a removal holds on their next request, their refresh gets the new."""
        await self.revocations.revoke_user(user_id, self._access_revocation_ttl)

    async def _revoke_sessions(self, session_ids: list[uuid.UUID], now: datetime) -> None:
        """Refresh tokens of these sessions stop working now; so do their access tokens."""
        await self.sessions.revoke(session_ids, now)
        await self.revocations.revoke_sessions([str(s) for s in session_ids], self._access_revocation_ttl)

    @property
    def _access_revocation_ttl(self) -> float:
        return self.settings.longest_access_token_ttl + self.settings.jwt_leeway_seconds + 60


def _grace_key(refresh: str) -> bytes:
    return hashlib.sha256(b"grace-key:" + refresh.encode()).digest()


def _grace_slot(refresh: str) -> str:
    return "refresh-grace:" + hashlib.sha256(b"grace-slot:" + refresh.encode()).hexdigest()


def _in_words(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day" + ("s" if seconds > 86400 else "")
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour" + ("s" if seconds > 3600 else "")
    return f"{max(1, seconds // 60)} minutes"


def _clean_name(name: str | None) -> str | None:
    name = (name or "").strip()
    return name or None


def _about(user: User | None, identity: Identity | None = None) -> dict[str, Any]:
    """An audit entry's target, an account (``user``, else the signed-in identity's own), and its
    organisation: the identity's tid when the account acts on itself, else the account's own.
    Nothing for an unknown account (a failed login records no address)."""
    if identity is not None:
        target_id = user.id if user is not None else identity.user_id
        return {"organization_id": identity.tenant_id, "target_type": "user", "target_id": target_id}
    if user is None:
        return {"organization_id": None, "target_type": None, "target_id": None}
    return {"organization_id": user.tenant_id, "target_type": "user", "target_id": user.id}


def user_event_data(user: User) -> dict[str, object]:
    """The account as other services may copy it (never a secret): every user.* event of auth."""
    return {
        "user_id": str(user.id),
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "tenant_id": str(user.tenant_id) if user.tenant_id else None,
        "roles": list(user.roles),
        "is_active": user.is_active,
        "email_verified": bool(user.email_verified),
        "created_at": user.created_at.isoformat(),
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
    }
