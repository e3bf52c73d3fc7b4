"""Encryption of users' Airtable tokens at rest (``shared.crypto``), under a key derived from
``AIRTABLE_TOKEN_ENCRYPTION_KEY``."""

from airtable_gateway.config import AirtableSettings
from shared.crypto import UserSecretCipher, configured_cipher

KEY_FILE = "airtable_token_key"
PURPOSE = b"pyairtable airtable-token v1"


def token_cipher(settings: AirtableSettings) -> UserSecretCipher | None:
    """None in production without ``AIRTABLE_TOKEN_ENCRYPTION_KEY``: personal tokens are then refused."""
    return configured_cipher(settings, settings.airtable_token_encryption_key, KEY_FILE, PURPOSE)
