"""Users' secrets at rest: readable back by the same user under the same key and purpose only."""

import uuid

from shared.crypto import UserSecretCipher

SECRET = "a-configured-secret-of-enough-length-for-tests"


def test_a_secret_reads_back_for_its_user_and_for_nobody_else() -> None:
    cipher = UserSecretCipher(SECRET, b"purpose one")
    alice, bob = uuid.uuid4(), uuid.uuid4()
    sealed = cipher.encrypt(alice, "JBSWY3DPEHPK3PXP")

    assert b"JBSWY3DPEHPK3PXP" not in sealed
    assert cipher.decrypt(alice, sealed) == "JBSWY3DPEHPK3PXP"
    assert cipher.decrypt(bob, sealed) is None  # copied to another user's row
    assert cipher.encrypt(alice, "JBSWY3DPEHPK3PXP") != sealed  # a fresh nonce each time


def test_each_purpose_and_each_secret_has_its_own_key() -> None:
    alice = uuid.uuid4()
    sealed = UserSecretCipher(SECRET, b"purpose one").encrypt(alice, "token")

    assert UserSecretCipher(SECRET, b"purpose two").decrypt(alice, sealed) is None
    assert UserSecretCipher(SECRET + "x", b"purpose one").decrypt(alice, sealed) is None
    assert UserSecretCipher(SECRET, b"purpose one").decrypt(alice, sealed[:-1]) is None  # tampered
    assert UserSecretCipher(SECRET, b"purpose one").decrypt(alice, b"short") is None
