"""A user's own Airtable token: stored encrypted, used for their requests only, removable; and the
settings that hold the platform's token and the encryption key."""

import stat
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from airtable_gateway.app import create_app
from airtable_gateway.config import AirtableSettings
from airtable_gateway.tokens import KEY_FILE, PURPOSE, token_cipher
from shared.crypto import UserSecretCipher
from shared.settings import SettingsError, load_settings
from tests.airtable_gateway.conftest import API, ENCRYPTION_KEY, JWT_SECRET, SettingsFactory, bearer, upstream_log
from tests.airtable_gateway.emulator_fixture import CRM_BASE, Emulator
from tests.conftest import app_client, eventually

UNKNOWN_TOKEN = "patNotKnownToAirtable.0123456789"


async def test_set_read_and_delete_your_token(client: httpx.AsyncClient, airtable_database: str) -> None:
    user = uuid.uuid4()
    assert (await client.get(f"{API}/token", headers=bearer(user))).json() == {"configured": False}

    saved = await client.put(f"{API}/token", json={"token": UNKNOWN_TOKEN}, headers=bearer(user))
    assert saved.status_code == 200
    assert saved.json()["configured"] is True
    assert saved.json()["hint"] == "6789"
    status = (await client.get(f"{API}/token", headers=bearer(user))).json()
    assert status["configured"] is True and status["hint"] == "6789" and "token" not in status

    with psycopg.connect(airtable_database) as conn:
        row = conn.execute("SELECT ciphertext FROM user_tokens WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    assert UNKNOWN_TOKEN.encode() not in bytes(row[0])

    assert (await client.delete(f"{API}/token", headers=bearer(user))).status_code == 204
    assert (await client.get(f"{API}/token", headers=bearer(user))).json() == {"configured": False}
    assert (await client.delete(f"{API}/token", headers=bearer(user))).status_code == 204  # idempotent


async def test_your_requests_use_your_token_and_only_yours(client: httpx.AsyncClient, emulator: Emulator) -> None:
    user, someone_else = uuid.uuid4(), uuid.uuid4()
    await client.put(f"{API}/token", json={"token": UNKNOWN_TOKEN}, headers=bearer(user))

    mine = await client.get(f"{API}/bases", headers=bearer(user))
    assert mine.status_code == 401  # Airtable does not know this token: proof it was the one sent
    assert mine.json()["error"]["type"] == "AUTHENTICATION_REQUIRED"
    theirs = await client.get(f"{API}/bases", headers=bearer(someone_else))
    assert theirs.status_code == 200

    await client.delete(f"{API}/token", headers=bearer(user))
    assert (await client.get(f"{API}/bases", headers=bearer(user))).status_code == 200
    tokens = {entry["token"] for entry in upstream_log(emulator)}
    assert len(tokens) == 2


def test_a_ciphertext_opens_only_for_its_user_and_key() -> None:
    cipher = UserSecretCipher(ENCRYPTION_KEY, PURPOSE)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    sealed = cipher.encrypt(alice, UNKNOWN_TOKEN)
    assert cipher.decrypt(alice, sealed) == UNKNOWN_TOKEN
    assert cipher.decrypt(bob, sealed) is None
    assert UserSecretCipher(JWT_SECRET, PURPOSE).decrypt(alice, sealed) is None
    assert cipher.decrypt(alice, sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert cipher.encrypt(alice, UNKNOWN_TOKEN) != sealed  # a fresh nonce each time


def test_development_generates_a_private_key_once(tmp_path: Path) -> None:
    settings = AirtableSettings(data_dir=str(tmp_path))
    first, second = token_cipher(settings), token_cipher(settings)
    assert first is not None and second is not None
    alice = uuid.uuid4()
    assert second.decrypt(alice, first.encrypt(alice, UNKNOWN_TOKEN)) == UNKNOWN_TOKEN
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


async def test_production_without_a_key_refuses_personal_tokens(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    settings = make_settings(environment="production", airtable_token_encryption_key="")
    async with app_client(create_app(settings)) as client:
        refused = await client.put(f"{API}/token", json={"token": UNKNOWN_TOKEN}, headers=bearer())
        platform = await client.get(f"{API}/bases/{CRM_BASE}", headers=bearer())
    assert refused.status_code == 503
    assert refused.json()["code"] == "user-tokens-disabled"
    assert platform.status_code == 200


def test_settings_read_the_plain_airtable_names() -> None:
    settings = load_settings(
        AirtableSettings,
        {
            "AIRTABLE_TOKEN": "patPlatform.x",
            "AIRTABLE_API_URL": "http://127.0.0.1:8099",
            "AIRTABLE_GATEWAY_DATABASE_URL": "postgresql://db/pyairtable_airtable",
            "DATABASE_URL": "postgresql://db/other",
            "CACHE_TTL": "12",
            "AIRTABLE_BASES": "appA, appB",
        },
    )
    assert settings.airtable_token == "patPlatform.x"
    assert settings.airtable_api_url == "http://127.0.0.1:8099"
    assert settings.database_url == "postgresql://db/pyairtable_airtable"
    assert settings.cache_ttl == 12
    assert settings.base_allow_list == {"appA", "appB"}
    assert settings.port == 8003


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"AIRTABLE_TOKEN_ENCRYPTION_KEY": "too-short"}, "AIRTABLE_TOKEN_ENCRYPTION_KEY"),
        ({"AIRTABLE_API_URL": "ftp://example"}, "AIRTABLE_API_URL"),
        ({"AIRTABLE_RATE_LIMIT": "0"}, "AIRTABLE_RATE_LIMIT"),
        ({"AIRTABLE_TOKEN_RATE_LIMIT": "5"}, "AIRTABLE_TOKEN_RATE_LIMIT"),
        ({"AIRTABLE_GATEWAY_CACHE_TTL": "-1"}, "AIRTABLE_GATEWAY_CACHE_TTL"),
        ({"AIRTABLE_QUEUE_TIMEOUT": "soon"}, "AIRTABLE_QUEUE_TIMEOUT"),
    ],
)
def test_bad_settings_name_their_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}"):
        load_settings(AirtableSettings, environ)


async def test_a_stored_token_that_no_longer_decrypts_is_refused_never_replaced_by_the_platforms(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    user = uuid.uuid4()
    async with app_client(create_app(make_settings())) as before:
        assert (
            await before.put(f"{API}/token", json={"token": UNKNOWN_TOKEN}, headers=bearer(user))
        ).status_code == 200
    sent_before = len(upstream_log(emulator))

    rotated = make_settings(airtable_token_encryption_key="another-key-" + "k" * 32)  # the key changed
    async with app_client(create_app(rotated)) as after:
        refused = await after.get(f"{API}/bases/{CRM_BASE}/tables", headers=bearer(user))
        sent_while_refused = len(upstream_log(emulator))
        stored_again = await after.put(f"{API}/token", json={"token": UNKNOWN_TOKEN}, headers=bearer(user))
        again = await after.get(f"{API}/bases/{CRM_BASE}/tables", headers=bearer(user))

    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "airtable-token-unreadable"
    assert UNKNOWN_TOKEN not in refused.text
    assert sent_while_refused == sent_before, "nothing went to Airtable with the platform's token instead"
    assert stored_again.status_code == 200
    assert again.status_code == 401, "stored again, the user's own (unknown to Airtable) token is the one used"


async def test_a_token_deleted_on_one_replica_stops_being_used_on_another(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    user = uuid.uuid4()
    settings = make_settings(token_cache_seconds=0.5)
    async with app_client(create_app(settings)) as one, app_client(create_app(settings)) as two:
        await one.put(f"{API}/token", json={"token": UNKNOWN_TOKEN}, headers=bearer(user))
        with_own = await two.get(f"{API}/bases/{CRM_BASE}/tables", headers=bearer(user))  # now kept by two
        assert (await one.delete(f"{API}/token", headers=bearer(user))).status_code == 204
        served = await eventually(
            lambda: answered_with_platform_token(two, user), "the other replica to forget the deleted token"
        )
    assert with_own.status_code == 401, "the user's own token (unknown to Airtable) was used"
    assert served.status_code == 200


async def answered_with_platform_token(client: httpx.AsyncClient, user: uuid.UUID) -> httpx.Response | None:
    response = await client.get(f"{API}/bases/{CRM_BASE}/tables", headers=bearer(user))
    return response if response.status_code == 200 else None
