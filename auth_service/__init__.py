"""Auth service (port 8001): accounts, argon2id passwords, access and refresh tokens, revocation."""

import shared  # noqa: F401 - first: the kernel keeps unused library extras out (shared/__init__.py)
