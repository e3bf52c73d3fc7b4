"""Secrets kept for one user at rest (a TOTP secret, an Airtable token): AES-256-GCM under a key
derived (HKDF-SHA256) from a configured secret and what the key is for, with the user's id as
associated data, so a ciphertext copied to another user's row does not decrypt."""

import os
import uuid
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.settings import ServiceSettings, dev_secret_file

NONCE_BYTES = 12


class UserSecretCipher:
    def __init__(self, secret: str, purpose: bytes) -> None:
        """``purpose`` (HKDF's info, e.g. ``b"pyairtable totp-secret v1"``) gives each use its own
        key from one secret; changing it makes every stored ciphertext unreadable."""
        self._secret, self._purpose = secret, purpose

    @cached_property
    def _aead(self) -> AESGCM:
        # Derived at the first use, not at start-up: the first call into cryptography's OpenSSL
        # sets it up (1.2 MB of a service's memory), which a service that signs HS256 tokens and
        # meets no such secret never needs.
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=self._purpose).derive(self._secret.encode())
        return AESGCM(key)

    def encrypt(self, user_id: uuid.UUID, plaintext: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), user_id.bytes)

    def decrypt(self, user_id: uuid.UUID, ciphertext: bytes) -> str | None:
        """The plaintext, or None when it does not decrypt (another key, another user, tampered)."""
        try:
            return self._aead.decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], user_id.bytes).decode()
        except (InvalidTag, ValueError):
            return None


def configured_cipher(
    settings: ServiceSettings, configured_key: str | None, key_file: str, purpose: bytes
) -> UserSecretCipher | None:
    """The configured key's cipher; outside production one under a key generated into DATA_DIR
    (``key_file``); None in production without a key (the feature then refuses to store)."""
    if configured_key:
        return UserSecretCipher(configured_key, purpose)
    if settings.is_production:
        return None
    return UserSecretCipher(dev_secret_file(settings, key_file), purpose)
