"""Auth service (port 8001): accounts, argon2id passwords, access and refresh tokens, revocation."""
