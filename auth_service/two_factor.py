"""Two-factor sign-in: TOTP (RFC 6238) authenticators and single-use recovery codes.

The TOTP secret is a credential: it is stored AES-256-GCM encrypted under a key derived from
``TOTP_ENCRYPTION_KEY``, with the user's id as associated data (a ciphertext copied to another
user's row does not decrypt), and it is never logged. Recovery codes carry 80 random bits and are
stored as their SHA-256. Every code check holds the account's two-factor verification slot of the
login throttle, counted apart from its password's: a right password does not buy more guesses.
"""

import base64
import hashlib
import hmac
import io
import logging
import secrets
import uuid
from datetime import datetime

import pyotp
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.config import AuthSettings
from auth_service.errors import (
    AccountLocked,
    InvalidCode,
    TooManyAttempts,
    TwoFactorEnabled,
    TwoFactorNotEnabled,
    TwoFactorUnavailable,
)
from auth_service.models import RecoveryCode, TwoFactor, User
from auth_service.schemas import TwoFactorEnrolment, TwoFactorStatus
from auth_service.throttle import Throttle
from shared.crypto import UserSecretCipher, configured_cipher

security_log = logging.getLogger("auth_service.security")
STEP_SECONDS = 30
DIGITS = 6
# Codes of the step before and after the current one are accepted too (clock drift, typing time).
DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
KEY_FILE = "totp_key"
PURPOSE = b"pyairtable totp-secret v1"


def secret_cipher(settings: AuthSettings) -> UserSecretCipher | None:
    """None in production without ``AUTH_TOTP_ENCRYPTION_KEY``: enrolment is then refused."""
    return configured_cipher(settings, settings.totp_encryption_key, KEY_FILE, PURPOSE)


def matching_step(totp_secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code ``code`` is, within the drift allowed around ``now``."""
    totp = pyotp.TOTP(totp_secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(now.timestamp()) // STEP_SECONDS
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_code() -> str:
    """80 random bits as 16 base32 letters in four groups: ``abcd-efgh-ijkl-mnop``."""
    letters = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return "-".join(letters[i : i + 4] for i in range(0, 16, 4))


def recovery_code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _is_totp_code(code: str) -> bool:
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def qr_code_png(uri: str) -> str:
    """The URI as a QR code, a PNG data URI an ``<img>`` shows as it is."""
    import segno  # only an enrolment draws one: 1.9 MB (with xml.sax) the service need not hold until then

    image = io.BytesIO()
    segno.make(uri, error="m").save(image, kind="png", scale=5, border=4)
    return "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()


class TwoFactorRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> TwoFactor | None:
        return await self.session.get(TwoFactor, user_id, populate_existing=True)

    async def put(self, factor: TwoFactor) -> None:
        await self.session.merge(factor)
        await self.session.flush()

    async def remove(self, user_id: uuid.UUID) -> bool:
        await self.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        factor = await self.get(user_id)
        if factor is None:
            return False
        await self.session.delete(factor)
        await self.session.flush()
        return True

    async def claim_step(self, user_id: uuid.UUID, step: int) -> bool:
        """Record ``step`` as used; False when it, or a later one, was used already (a replay)."""
        result = await self.session.execute(
            update(TwoFactor)
            .where(
                TwoFactor.user_id == user_id,
                or_(TwoFactor.last_used_step.is_(None), TwoFactor.last_used_step < step),
            )
            .values(last_used_step=step)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def replace_recovery_codes(self, user_id: uuid.UUID, hashes: list[str], now: datetime) -> None:
        await self.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        self.session.add_all(
            RecoveryCode(id=uuid.uuid4(), user_id=user_id, code_hash=code_hash, created_at=now) for code_hash in hashes
        )
        await self.session.flush()

    async def use_recovery_code(self, user_id: uuid.UUID, code_hash: str, now: datetime) -> bool:
        """Mark the code used; False when unknown, used, or used by a concurrent request first."""
        result = await self.session.execute(
            update(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.code_hash == code_hash, RecoveryCode.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def recovery_codes_left(self, user_id: uuid.UUID) -> int:
        count = await self.session.scalar(
            select(func.count()).where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        )
        return int(count or 0)


class TwoFactorService:
    """Enrolment, confirmation, code checks and removal of a user's second factor."""

    def __init__(
        self,
        db: AsyncSession,
        settings: AuthSettings,
        throttle: Throttle,
        cipher: UserSecretCipher | None,
    ) -> None:
        self.factors = TwoFactorRepository(db)
        self.settings = settings
        self.throttle = throttle
        self.cipher = cipher

    async def enabled(self, user_id: uuid.UUID) -> bool:
        factor = await self.factors.get(user_id)
        return factor is not None and factor.confirmed_at is not None

    async def status(self, user_id: uuid.UUID) -> TwoFactorStatus:
        factor = await self.factors.get(user_id)
        confirmed = factor is not None and factor.confirmed_at is not None
        left = await self.factors.recovery_codes_left(user_id) if confirmed else 0
        return TwoFactorStatus(
            enabled=confirmed, pending=factor is not None and not confirmed, recovery_codes_left=left
        )

    async def enrol(self, user: User, now: datetime) -> TwoFactorEnrolment:
        """A new secret, pending until ``confirm``; a pending one before it is replaced."""
        cipher = self._cipher()
        if await self.enabled(user.id):
            raise TwoFactorEnabled()
        totp_secret = pyotp.random_base32()
        await self.factors.put(
            TwoFactor(
                user_id=user.id,
                secret=cipher.encrypt(user.id, totp_secret),
                created_at=now,
                confirmed_at=None,
                last_used_step=None,
            )
        )
        uri = pyotp.TOTP(totp_secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
            name=user.email, issuer_name=self.settings.totp_issuer
        )
        security_log.info("two-factor enrolment started", extra={"user_id": str(user.id)})
        return TwoFactorEnrolment(secret=totp_secret, otpauth_uri=uri, qr_code=qr_code_png(uri))

    async def confirm(self, user: User, code: str, now: datetime) -> list[str]:
        """The pending authenticator's first code turns two-factor on; the recovery codes, shown once."""
        factor = await self.factors.get(user.id)
        if factor is None or factor.confirmed_at is not None:
            raise TwoFactorNotEnabled("No authenticator is waiting for confirmation; enrol first.")
        await self.check_code(user, code, now, confirming=True)
        factor.confirmed_at = now
        security_log.info("two-factor turned on", extra={"user_id": str(user.id)})
        return await self._new_recovery_codes(user, now)

    async def renew_recovery_codes(self, user: User, code: str, now: datetime) -> list[str]:
        """Ten new recovery codes, after a code; the earlier ones stop working."""
        if not await self.enabled(user.id):
            raise TwoFactorNotEnabled()
        await self.check_code(user, code, now)
        security_log.info("recovery codes renewed", extra={"user_id": str(user.id)})
        return await self._new_recovery_codes(user, now)

    async def _new_recovery_codes(self, user: User, now: datetime) -> list[str]:
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        await self.factors.replace_recovery_codes(user.id, [recovery_code_hash(_normalise(c)) for c in codes], now)
        return codes

    async def check_code(self, user: User, code: str, now: datetime, *, confirming: bool = False) -> None:
        """Accept ``code`` once (a TOTP code of an unused step, or an unused recovery code), under
        the account's two-factor throttle; InvalidCode, or TooManyAttempts while it is locked.

        ``confirming``: the code of a pending authenticator (no recovery codes yet); otherwise
        only a confirmed one's counts."""
        key = f"two-factor:{user.id}"
        try:
            async with self.throttle.verification(key):
                accepted = await self._accept(user, _normalise(code), now, confirming)
                if accepted:
                    await self.throttle.succeeded(key)
        except AccountLocked as locked:
            security_log.info("two-factor code refused: locked", extra={"user_id": str(user.id), "outcome": "locked"})
            raise TooManyAttempts(locked.retry_after) from None
        if not accepted:
            security_log.info("two-factor code refused", extra={"user_id": str(user.id), "outcome": "failure"})
            raise InvalidCode()

    async def _accept(self, user: User, code: str, now: datetime, confirming: bool) -> bool:
        factor = await self.factors.get(user.id)
        if factor is None or (factor.confirmed_at is None) != confirming:
            return False
        if _is_totp_code(code):
            totp_secret = self._cipher().decrypt(user.id, factor.secret)
            if totp_secret is None:
                security_log.error("two-factor secret does not decrypt: wrong TOTP_ENCRYPTION_KEY?")
                raise TwoFactorUnavailable()
            step = matching_step(totp_secret, code, now)
            return step is not None and await self.factors.claim_step(user.id, step)
        if confirming:
            return False
        used = await self.factors.use_recovery_code(user.id, recovery_code_hash(code), now)
        if used:
            security_log.info("recovery code used", extra={"user_id": str(user.id)})
        return used

    async def disable(self, user: User, code: str, now: datetime) -> None:
        """Off, after a code (or a recovery code) proves the authenticator is at hand."""
        if not await self.enabled(user.id):
            raise TwoFactorNotEnabled()
        await self.check_code(user, code, now)
        await self.factors.remove(user.id)
        security_log.info("two-factor turned off", extra={"user_id": str(user.id)})

    async def reset(self, user_id: uuid.UUID) -> bool:
        """An administrator removes the factor (a lost device); False when there was none."""
        removed = await self.factors.remove(user_id)
        await self.throttle.succeeded(f"two-factor:{user_id}")
        return removed

    def _cipher(self) -> UserSecretCipher:
        if self.cipher is None:
            raise TwoFactorUnavailable()
        return self.cipher
