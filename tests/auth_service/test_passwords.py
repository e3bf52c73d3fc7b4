"""Password hashing with argon2's memory in huge pages (auth_service/passwords.py): the same hashes as
argon2-cffi's own, every wrong password and malformed hash refused, the memory given back."""

import os
import threading

import pytest
from argon2 import Parameters, PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auth_service.config import AuthSettings
from auth_service.passwords import HugePageHasher, Passwords, huge_page_mappings

PARAMETERS = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=3, memory_cost=65536, parallelism=4
)
PASSWORD = "correct hörse battery staple ✓"


@pytest.fixture(scope="module")
def ours() -> HugePageHasher:
    mappings = huge_page_mappings()
    assert mappings is not None, "Linux with cffi callbacks: the huge-page hasher must be available"
    return HugePageHasher.with_mappings(mappings, PARAMETERS)


@pytest.fixture(scope="module")
def library() -> PasswordHasher:
    return PasswordHasher.from_parameters(PARAMETERS)


def test_the_service_hashes_with_huge_pages_where_it_can() -> None:
    assert isinstance(Passwords(AuthSettings()).hasher, HugePageHasher)


def test_a_hash_is_the_one_argon2_cffi_makes_from_the_same_salt(ours: HugePageHasher, library: PasswordHasher) -> None:
    salt = os.urandom(16)
    assert ours.hash(PASSWORD, salt=salt) == library.hash(PASSWORD, salt=salt)


def test_hashes_verify_both_ways_and_wrong_passwords_never(ours: HugePageHasher, library: PasswordHasher) -> None:
    made_by_us, made_by_library = ours.hash(PASSWORD), library.hash(PASSWORD)
    assert made_by_us != made_by_library  # each with its own random salt
    assert library.verify(made_by_us, PASSWORD)
    assert ours.verify(made_by_library, PASSWORD)
    for hashed in (made_by_us, made_by_library):
        for wrong in ("", PASSWORD[:-1], PASSWORD + " ", PASSWORD.upper(), "\x00" + PASSWORD):
            with pytest.raises(VerifyMismatchError):
                ours.verify(hashed, wrong)


def test_hashes_of_another_kind_are_verified_by_the_library(ours: HugePageHasher) -> None:
    argon2i = PasswordHasher(memory_cost=1024, type=Type.I).hash(PASSWORD)
    assert ours.verify(argon2i, PASSWORD)
    with pytest.raises(VerifyMismatchError):
        ours.verify(argon2i, "wrong")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=65536,t=3,p=4$!!!!$c2VjcmV0",  # not base64
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # a salt argon2 finds too short
        "$argon2id$v=19$m=1,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",  # parameters argon2 refuses
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$ÿÿÿ",
    ],
)
def test_a_malformed_stored_hash_is_refused_not_crashed_on(ours: HugePageHasher, stored: str) -> None:
    with pytest.raises((InvalidHashError, VerificationError)):
        ours.verify(stored, PASSWORD)


async def test_the_service_answers_false_for_a_wrong_password_or_a_broken_hash() -> None:
    passwords = Passwords(AuthSettings())
    hashed = await passwords.hash(PASSWORD)
    assert await passwords.verify(hashed, PASSWORD)
    assert not await passwords.verify(hashed, PASSWORD + "!")
    assert not await passwords.verify("$argon2id$v=19$m=65536,t=3,p=4$!!!!$c2VjcmV0", PASSWORD)


def test_concurrent_verifications_each_get_their_own_memory(ours: HugePageHasher) -> None:
    hashed = ours.hash(PASSWORD)
    results: list[bool] = []

    def verify(password: str) -> None:
        try:
            results.append(ours.verify(hashed, password))
        except VerifyMismatchError:
            results.append(False)

    threads = [threading.Thread(target=verify, args=(PASSWORD if i % 2 else "wrong",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True, True]


def test_the_memory_is_given_back_after_each_computation(ours: HugePageHasher) -> None:
    """Five verifications of 64 MiB each: a mapping kept would leave hundreds of MB resident."""
    hashed = ours.hash(PASSWORD)
    before = _resident_mb()
    for _ in range(5):
        assert ours.verify(hashed, PASSWORD)
    assert _resident_mb() - before < 32


def _resident_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
