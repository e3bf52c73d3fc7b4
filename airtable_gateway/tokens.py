"""Encryption of users' Airtable tokens at rest: AES-256-GCM under a key derived from
``AIRTABLE_TOKEN_ENCRYPTION_KEY``, with the user's id as associated data (a ciphertext copied to
another user's row does not decrypt)."""

import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airtable_gateway.config import AirtableSettings
from shared.settings import dev_secret_file

NONCE_BYTES = 12
KEY_FILE = "airtable_token_key"


class TokenCipher:
    def __init__(self, secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pyairtable airtable-token v1").derive(
            secret.encode()
        )
        self._aead = AESGCM(key)

    def encrypt(self, user_id: uuid.UUID, token: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, token.encode(), user_id.bytes)

    def decrypt(self, user_id: uuid.UUID, ciphertext: bytes) -> str | None:
        """The token, or None when it does not decrypt (another key, another user, tampered)."""
        try:
            return self._aead.decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], user_id.bytes).decode()
        except (InvalidTag, ValueError):
            return None


def token_cipher(settings: AirtableSettings) -> TokenCipher | None:
    """The configured key; outside production one generated into DATA_DIR; None in production
    without a key (personal tokens are then refused)."""
    if settings.airtable_token_encryption_key:
        return TokenCipher(settings.airtable_token_encryption_key)
    if settings.is_production:
        return None
    return TokenCipher(dev_secret_file(settings, KEY_FILE))
