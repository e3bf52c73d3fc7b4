"""JWT key material: the HS256 secret or an EdDSA/RS256 key pair, with stable key IDs.

Outside production the auth service generates its signing key into DATA_DIR on first start, and
services sharing that DATA_DIR derive the verification key from it.
"""

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from shared.settings import ServiceSettings, SettingsError, ensure_dev_secret

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey
DEV_PRIVATE_KEY_FILE = "jwt_private_key.pem"


class VerificationKey(msgspec.Struct, frozen=True):
    kid: str
    algorithm: str
    key: Any


def hs256_kid(secret: str) -> str:
    return "hs-" + hashlib.sha256(b"pyairtable-kid:" + secret.encode()).hexdigest()[:16]


def public_jwk(public_key: PublicKey) -> dict[str, Any]:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(public_key))
        jwk["alg"] = "EdDSA"
        thumb_input = {k: jwk[k] for k in ("crv", "kty", "x")}
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(public_key))
        jwk["alg"] = "RS256"
        thumb_input = {k: jwk[k] for k in ("e", "kty", "n")}
    digest = hashlib.sha256(json.dumps(thumb_input, separators=(",", ":"), sort_keys=True).encode())
    jwk["kid"] = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()  # RFC 7638
    jwk["use"] = "sig"
    return jwk


def key_from_jwk(jwk: dict[str, Any]) -> VerificationKey | None:
    """A verification key from one JWKS entry; None for key types we never accept."""
    try:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            return VerificationKey(jwk["kid"], "EdDSA", OKPAlgorithm.from_jwk(jwk))
        if jwk.get("kty") == "RSA":
            key = RSAAlgorithm.from_jwk(jwk)
            if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
                return VerificationKey(jwk["kid"], "RS256", key)
    except (KeyError, ValueError, TypeError):
        return None
    return None


def load_private_key(settings: ServiceSettings, private_key_file: str) -> PrivateKey:
    """The signing key: from the configured file, or generated into DATA_DIR in development."""
    if private_key_file:
        path = Path(private_key_file)
    elif settings.is_production:
        raise SettingsError("JWT_PRIVATE_KEY_FILE: required for asymmetric JWTs in production")
    else:
        path = settings.data_path / DEV_PRIVATE_KEY_FILE
        if not path.exists():
            _generate_private_key(path, settings.jwt_algorithm)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    expected = ed25519.Ed25519PrivateKey if settings.jwt_algorithm == "EdDSA" else rsa.RSAPrivateKey
    if not isinstance(key, expected):
        raise SettingsError(f"JWT_PRIVATE_KEY_FILE: not a key for {settings.jwt_algorithm}")
    return key


def _generate_private_key(path: Path, algorithm: str) -> None:
    key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "EdDSA"
        else rsa.generate_private_key(public_exponent=65537, key_size=3072)
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def local_verification_keys(settings: ServiceSettings) -> list[VerificationKey]:
    """Keys known without a network call (everything but a JWKS URL)."""
    if settings.jwt_algorithm == "HS256":
        secret = ensure_dev_secret(settings)
        return [VerificationKey(hs256_kid(secret), "HS256", secret.encode())]
    if settings.jwt_public_key_file:
        public = serialization.load_pem_public_key(Path(settings.jwt_public_key_file).read_bytes())
    elif settings.jwt_jwks_url:
        return []
    elif not settings.is_production:
        public = load_private_key(settings, settings.jwt_private_key_file).public_key()
    else:
        raise SettingsError("JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL: required in production")
    if not isinstance(public, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise SettingsError("JWT_PUBLIC_KEY_FILE: only Ed25519 and RSA keys are accepted")
    jwk = public_jwk(public)
    if jwk["alg"] != settings.jwt_algorithm:
        raise SettingsError(f"JWT_PUBLIC_KEY_FILE: not a key for {settings.jwt_algorithm}")
    return [VerificationKey(jwk["kid"], jwk["alg"], public)]
