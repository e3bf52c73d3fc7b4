"""Base grants (issue 14): which organisation may reach which Airtable base through the platform's
token. Platform administrators manage them, an organisation's owners and admins see theirs; every
route that takes a base (and the ``/v0`` mirror) refuses a base the caller's active organisation is
not granted, before the cache; a read grant and the viewer role refuse writes; a user's own
Airtable token is not limited by grants."""

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import requests
from litestar import Litestar
from pyairtable import Api

from airtable_gateway.app import create_app
from airtable_gateway.config import AirtableSettings
from airtable_gateway.emulator.app import token_fingerprint
from embedded.app import airtable_settings
from shared.events import new_event
from shared.settings import SettingsError
from tests.airtable_gateway.conftest import (
    API,
    JWT_SECRET,
    ORG,
    PROBLEM,
    SettingsFactory,
    bearer,
    grant,
    upstream_log,
)
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator, run_emulator
from tests.airtable_gateway.test_mirror import service  # noqa: F401  (pytest finds fixtures by name)
from tests.conftest import app_client, eventually
from tests.e2e.processes import Service, access_token

GRANTS = f"{API}/grants"
USER_TOKEN = "patUserOwnToken.0123456789abcdef"
ADMIN = {"roles": ("user", "admin")}


def grant_url(organization_id: uuid.UUID, base_id: str) -> str:
    return f"{GRANTS}/{organization_id}/{base_id}"


def outbox_events(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE event_type = 'audit.recorded' ORDER BY occurred_at")
        return [row[0] for row in rows]


def refused(response: httpx.Response, code: str) -> bool:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == code
    return True


# Grant management -----------------------------------------------------------------------------


async def test_a_platform_admin_grants_changes_and_revokes_and_each_change_is_audited(
    client: httpx.AsyncClient, org_grants: str
) -> None:
    organization, admin = uuid.uuid4(), uuid.uuid4()
    as_admin = bearer(admin, **ADMIN)

    created = await client.put(grant_url(organization, OPS_BASE), json={"access": "read"}, headers=as_admin)
    assert created.status_code == 201, created.text
    assert created.json()["access"] == "read"
    assert created.json()["created_by"] == str(admin)
    same = await client.put(grant_url(organization, OPS_BASE), json={"access": "read"}, headers=as_admin)
    assert same.status_code == 200
    changed = await client.put(grant_url(organization, OPS_BASE), json={"access": "write"}, headers=as_admin)
    assert changed.status_code == 200 and changed.json()["access"] == "write"

    listed = await client.get(GRANTS, params={"organization_id": str(organization)}, headers=as_admin)
    assert listed.status_code == 200
    assert [(item["base_id"], item["access"]) for item in listed.json()["grants"]] == [(OPS_BASE, "write")]
    everyone = await client.get(GRANTS, headers=as_admin)
    assert {(item["organization_id"], item["base_id"]) for item in everyone.json()["grants"]} >= {
        (str(ORG), CRM_BASE),
        (str(organization), OPS_BASE),
    }

    assert (await client.delete(grant_url(organization, OPS_BASE), headers=as_admin)).status_code == 204
    again = await client.delete(grant_url(organization, OPS_BASE), headers=as_admin)
    assert again.status_code == 404 and again.json()["code"] == "grant-not-found"
    assert (await client.get(GRANTS, params={"organization_id": str(organization)}, headers=as_admin)).json() == {
        "grants": []
    }

    events = outbox_events(org_grants)
    assert [event["action"] for event in events] == ["grant.created", "grant.changed", "grant.revoked"]
    for event in events:
        assert event["actor_id"] == str(admin)
        assert event["organization_id"] == str(organization)
        assert (event["target_type"], event["target_id"]) == ("base", OPS_BASE)
        assert event["ip"] == "127.0.0.1"
        assert "@" not in msgspec.json.encode(event).decode()  # never an email address
    assert events[1]["details"] == {"base_id": OPS_BASE, "from": "read", "to": "write"}

    def published() -> bool:
        with psycopg.connect(org_grants) as conn:
            return conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone() == (0,)

    await eventually(published, "the outbox relay to publish the audit events")


async def test_who_may_see_and_manage_grants(client: httpx.AsyncClient) -> None:
    other = uuid.uuid4()
    own = {"organization_id": str(ORG)}
    for role in ("owner", "admin"):
        mine = await client.get(GRANTS, headers=bearer(org_role=role))
        assert mine.status_code == 200
        assert {(item["organization_id"], item["base_id"]) for item in mine.json()["grants"]} == {
            (str(ORG), CRM_BASE),
            (str(ORG), OPS_BASE),
        }
        assert (await client.get(GRANTS, params=own, headers=bearer(org_role=role))).json() == mine.json()
        other_org = await client.get(GRANTS, params={"organization_id": str(other)}, headers=bearer(org_role=role))
        assert refused(other_org, "grants-not-visible")
        # Seeing is not managing: only platform administrators grant.
        for response in (
            await client.put(grant_url(ORG, TASKS_BASE), json={"access": "write"}, headers=bearer(org_role=role)),
            await client.delete(grant_url(ORG, CRM_BASE), headers=bearer(org_role=role)),
        ):
            assert response.status_code == 403
    for headers in (bearer(org_role="member"), bearer(org_role="viewer"), bearer(org=None)):
        assert refused(await client.get(GRANTS, headers=headers), "grants-not-visible")
    # Still granted: nothing above changed a grant.
    assert (await client.get(f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records", headers=bearer())).status_code == 200


TASKS_BASE = "appNoGrantBase000"


async def test_malformed_grants_are_refused_with_a_clear_4xx(client: httpx.AsyncClient) -> None:
    as_admin = bearer(**ADMIN)
    for url, body in (
        (grant_url(ORG, "notAnAirtableBase"), {"access": "read"}),
        (grant_url(ORG, "app123"), {"access": "read"}),
        (grant_url(ORG, "appEmuCrmBase0000x"), {"access": "read"}),
        (grant_url(ORG, CRM_BASE), {"access": "admin"}),
        (grant_url(ORG, CRM_BASE), {"access": "read", "extra": 1}),
        (grant_url(ORG, CRM_BASE), {}),
    ):
        response = await client.put(url, json=body, headers=as_admin)
        assert (response.status_code, response.json()["code"]) == (422, "validation-error"), (url, body, response.text)
        assert response.headers["content-type"] == PROBLEM
    not_an_organisation = await client.put(f"{GRANTS}/not-a-uuid/{CRM_BASE}", json={"access": "read"}, headers=as_admin)
    assert (not_an_organisation.status_code, not_an_organisation.json()["code"]) == (404, "not-found")
    bad_filter = await client.get(GRANTS, params={"organization_id": "nope"}, headers=as_admin)
    assert bad_filter.status_code == 422 and bad_filter.headers["content-type"] == PROBLEM


# Enforcement ------------------------------------------------------------------------------------

CONTACTS_URL = f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records"
RECORD_URL = f"{CONTACTS_URL}/recContact0000001"


def base_requests(base: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every route that takes a base, and the mirror's methods, with a well-formed request each."""
    records = f"{API}/bases/{base}/tables/{CONTACTS}/records"
    record = f"{records}/recContact0000001"
    mirror = f"{API}/v0/{base}/{CONTACTS}"
    return [
        ("GET", f"{API}/bases/{base}", {}),
        ("GET", f"{API}/bases/{base}/tables", {}),
        ("GET", f"{API}/bases/{base}/tables/{CONTACTS}", {}),
        ("GET", records, {"params": {"page_size": 1}}),
        ("GET", record, {}),
        ("POST", records, {"json": {"fields": {"Name": "x"}}}),
        ("PATCH", records, {"json": {"records": [{"id": "recContact0000001", "fields": {"Name": "x"}}]}}),
        ("PUT", records, {"json": {"records": [{"id": "recContact0000001", "fields": {"Name": "x"}}]}}),
        ("DELETE", records, {"params": {"record_ids": "recContact0000001"}}),
        (
            "POST",
            f"{records}/upsert",
            {"json": {"records": [{"fields": {"Name": "x"}}], "fields_to_merge_on": ["Name"]}},
        ),
        ("PATCH", record, {"json": {"fields": {"Name": "x"}}}),
        ("PUT", record, {"json": {"fields": {"Name": "x"}}}),
        ("DELETE", record, {}),
        ("GET", mirror, {"params": {"pageSize": 1}}),
        ("POST", f"{mirror}/listRecords", {"json": {"pageSize": 1}}),
        ("GET", f"{API}/v0/meta/bases/{base}/tables", {}),
        ("POST", mirror, {"json": {"records": [{"fields": {"Name": "x"}}]}}),
        ("PATCH", mirror, {"json": {"records": [{"id": "recContact0000001", "fields": {"Name": "x"}}]}}),
        ("PUT", f"{mirror}/recContact0000001", {"json": {"fields": {"Name": "x"}}}),
        ("DELETE", f"{mirror}/recContact0000001", {}),
    ]


WRITES = [(method, url) for method, url, _ in base_requests(CRM_BASE) if method != "GET" and "listRecords" not in url]


async def test_every_base_route_and_the_mirror_refuse_a_base_without_a_grant(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    stranger, no_organisation = bearer(org=uuid.uuid4()), bearer(org=None)
    for headers in (stranger, no_organisation):
        for method, url, options in base_requests(CRM_BASE):
            response = await client.request(method, url, headers=headers, **options)
            assert refused(response, "base-not-granted"), (method, url)
    # Creating a base is a change outside any base: no grant covers it.
    new_base = await client.post(f"{API}/v0/meta/bases", json={"name": "Mine"}, headers=bearer())
    assert refused(new_base, "base-not-granted")
    assert upstream_log(emulator, CRM_BASE) == []


async def test_listings_show_only_the_granted_bases(client: httpx.AsyncClient, org_grants: str) -> None:
    crm_only = uuid.uuid4()
    grant(org_grants, crm_only, CRM_BASE, "read")
    for url in (f"{API}/bases", f"{API}/v0/meta/bases"):
        everything = await client.get(url)
        assert {base["id"] for base in everything.json()["bases"]} == {CRM_BASE, OPS_BASE}
        assert [base["id"] for base in (await client.get(url, headers=bearer(org=crm_only))).json()["bases"]] == [
            CRM_BASE
        ]
        for headers in (bearer(org=uuid.uuid4()), bearer(org=None)):
            nothing = await client.get(url, headers=headers)
            assert nothing.status_code == 200 and nothing.json()["bases"] == []


async def test_a_read_grant_and_the_viewer_role_refuse_writes(
    client: httpx.AsyncClient, org_grants: str, emulator: Emulator
) -> None:
    reader = uuid.uuid4()
    grant(org_grants, reader, CRM_BASE, "read")
    for headers, code in ((bearer(org=reader), "base-read-only"), (bearer(org_role="viewer"), "read-only-role")):
        assert (await client.get(CONTACTS_URL, params={"page_size": 1}, headers=headers)).status_code == 200
        assert (await client.get(RECORD_URL, headers=headers)).status_code == 200
        listed = await client.post(f"{API}/v0/{CRM_BASE}/{CONTACTS}/listRecords", json={"pageSize": 1}, headers=headers)
        assert listed.status_code == 200
        for method, url, options in base_requests(CRM_BASE):
            if (method, url) in WRITES:
                response = await client.request(method, url, headers=headers, **options)
                assert refused(response, code), (method, url)
    assert all(entry["method"] == "GET" or entry["path"].endswith("/listRecords") for entry in upstream_log(emulator))
    # A member of the write-granted organisation writes.
    created = await client.post(CONTACTS_URL, json={"fields": {"Name": "Granted"}}, headers=bearer())
    assert created.status_code == 201, created.text


async def test_a_cached_answer_never_reaches_an_organisation_without_a_grant(
    client: httpx.AsyncClient, emulator: Emulator, org_grants: str
) -> None:
    first = await client.get(CONTACTS_URL, params={"page_size": 3})
    again = await client.get(CONTACTS_URL, params={"page_size": 3})
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    for url, options in (
        (CONTACTS_URL, {"params": {"page_size": 3}}),
        (f"{API}/bases/{CRM_BASE}/tables", {}),
        (f"{API}/v0/{CRM_BASE}/{CONTACTS}", {"params": {"pageSize": 3}}),
    ):
        outsider = await client.get(url, headers=bearer(org=uuid.uuid4()), **options)
        assert refused(outsider, "base-not-granted")
        assert outsider.headers.get("x-cache") is None and "etag" not in outsider.headers
    conditional = await client.get(
        CONTACTS_URL,
        params={"page_size": 3},
        headers={**bearer(org=uuid.uuid4()), "If-None-Match": first.headers["etag"]},
    )
    assert refused(conditional, "base-not-granted")  # not even a 304 confirming the cached entry

    # Revoked here: the organisation's next request is refused at once, its cached entries too.
    revoked = await client.delete(grant_url(ORG, CRM_BASE), headers=bearer(**ADMIN))
    assert revoked.status_code == 204
    assert refused(await client.get(CONTACTS_URL, params={"page_size": 3}), "base-not-granted")
    assert len(upstream_log(emulator, CRM_BASE)) == 1


@pytest.fixture
def two_token_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with run_emulator(tmp_path_factory.mktemp("emulator"), tokens=("emulator-token", USER_TOKEN)) as emulator:
        yield emulator


async def test_a_users_own_airtable_token_is_not_limited_by_grants(
    make_settings: SettingsFactory, two_token_emulator: Emulator
) -> None:
    settings = make_settings(airtable_api_url=two_token_emulator.url, airtable_token="emulator-token")
    user = uuid.uuid4()
    async with app_client(create_app(settings)) as client:
        # A viewer of an organisation granted nothing: the platform's token reaches no base.
        headers = bearer(user, org=uuid.uuid4(), org_role="viewer")
        assert refused(await client.get(CONTACTS_URL, params={"page_size": 1}, headers=headers), "base-not-granted")
        saved = await client.put(f"{API}/token", json={"token": USER_TOKEN}, headers=headers)
        assert saved.status_code == 200
        # Their own token: every base it can see, read and written (Airtable's permissions apply).
        listed = await client.get(f"{API}/bases", headers=headers)
        assert {base["id"] for base in listed.json()["bases"]} == {CRM_BASE, OPS_BASE}
        assert (await client.get(CONTACTS_URL, params={"page_size": 1}, headers=headers)).status_code == 200
        created = await client.post(
            f"{API}/v0/{OPS_BASE}/{TASKS}", json={"records": [{"fields": {"Name": "Mine"}}]}, headers=headers
        )
        assert created.status_code == 200, created.text
    tokens = {entry["token"] for entry in upstream_log(two_token_emulator) if entry["base"] in (CRM_BASE, OPS_BASE)}
    assert tokens == {token_fingerprint(USER_TOKEN)}  # never the platform's


# pyairtable through the mirror, the service as a real process ---------------------------------


def test_pyairtable_through_the_mirror_within_a_read_grant(service: Service, org_grants: str) -> None:  # noqa: F811
    reader = uuid.uuid4()
    grant(org_grants, reader, CRM_BASE, "read")
    api = Api(access_token(org=reader), endpoint_url=f"{service.url}{API}")
    try:
        assert [base.id for base in api.bases()] == [CRM_BASE]
        contacts = api.table(CRM_BASE, CONTACTS)
        assert len(contacts.all()) == 250
        with pytest.raises(requests.HTTPError) as not_granted:
            api.table(OPS_BASE, TASKS).all()
        assert not_granted.value.response.status_code == 403
        assert not_granted.value.response.json()["code"] == "base-not-granted"
        with pytest.raises(requests.HTTPError) as read_only:
            contacts.create({"Name": "Refused"})
        assert read_only.value.response.status_code == 403
        assert read_only.value.response.json()["code"] == "base-read-only"
    finally:
        api.session.close()
    writer = Api(access_token(org=ORG), endpoint_url=f"{service.url}{API}")
    try:
        created = writer.table(OPS_BASE, TASKS).create({"Name": "Granted"})
        assert created["fields"]["Name"] == "Granted"
    finally:
        writer.session.close()


# Settings -------------------------------------------------------------------------------------


async def test_grant_all_gives_every_organisation_access_but_is_refused_in_production(
    make_settings: SettingsFactory,
) -> None:
    async with app_client(create_app(make_settings(airtable_grant_all="read"))) as client:
        stranger = bearer(org=uuid.uuid4())
        assert (await client.get(CONTACTS_URL, params={"page_size": 1}, headers=stranger)).status_code == 200
        assert refused(
            await client.post(CONTACTS_URL, json={"fields": {"Name": "x"}}, headers=stranger), "base-read-only"
        )
        assert refused(await client.get(CONTACTS_URL, headers=bearer(org=None)), "base-not-granted")
    with pytest.raises(SettingsError, match="AIRTABLE_GRANT_ALL"):
        AirtableSettings(environment="production", jwt_secret=JWT_SECRET, airtable_grant_all="write").validate()
    with pytest.raises(SettingsError, match="AIRTABLE_GRANT_CACHE_SECONDS"):
        make_settings(airtable_grant_cache_seconds=30)


def test_the_embedded_mode_grants_all_only_with_the_emulator(tmp_path: Any) -> None:
    base = {"DATA_DIR": str(tmp_path)}
    assert airtable_settings(base, {"airtable_emulator": True}).airtable_grant_all == "write"
    with_token = {**base, "AIRTABLE_TOKEN": "patSomeRealToken"}
    assert airtable_settings(with_token, {"airtable_emulator": True}).airtable_grant_all == ""
    assert airtable_settings(base, {}).airtable_grant_all == ""  # AIRTABLE_EMULATOR=false
    assert airtable_settings({**base, "AIRTABLE_GRANT_ALL": ""}, {"airtable_emulator": True}).airtable_grant_all == ""


async def test_a_grant_revoked_on_one_replica_takes_effect_on_another_within_the_grant_cache(
    settings: AirtableSettings,
) -> None:
    """Two replicas on one database: the other replica trusts what it read for at most
    AIRTABLE_GRANT_CACHE_SECONDS, then refuses too (and a new grant is seen as soon)."""
    async with app_client(create_app(settings)) as first, app_client(create_app(settings)) as second:
        assert (await second.get(CONTACTS_URL, params={"page_size": 1}, headers=bearer())).status_code == 200
        revoked = await first.delete(grant_url(ORG, CRM_BASE), headers=bearer(**ADMIN))
        assert revoked.status_code == 204

        async def refused_on_the_other() -> bool:
            response = await second.get(CONTACTS_URL, params={"page_size": 1}, headers=bearer())
            return response.status_code == 403 and response.json()["code"] == "base-not-granted"

        await eventually(refused_on_the_other, "the revocation to reach the other replica")
        granted = await first.put(grant_url(ORG, CRM_BASE), json={"access": "read"}, headers=bearer(**ADMIN))
        assert granted.status_code == 201

        async def served_on_the_other() -> bool:
            response = await second.get(CONTACTS_URL, params={"page_size": 1}, headers=bearer())
            return response.status_code == 200

        await eventually(served_on_the_other, "the new grant to reach the other replica")


async def test_a_deleted_organisations_grants_go_with_it(
    airtable_app: Litestar, client: httpx.AsyncClient, org_grants: str
) -> None:
    """auth's ``organization.deleted`` (the event bus) drops the organisation's grants, once."""
    other = uuid.uuid4()
    grant(org_grants, other, CRM_BASE, "read")
    deleted = new_event("organization.deleted", "auth", {"organization_id": str(ORG)})
    await airtable_app.state.bus.publish(deleted)
    await airtable_app.state.bus.publish(deleted)  # redelivered: applied once

    def grants_left() -> set[str]:
        with psycopg.connect(org_grants) as conn:
            return {str(row[0]) for row in conn.execute("SELECT organization_id FROM base_grants")}

    await eventually(lambda: grants_left() == {str(other)}, "the organisation's grants to be dropped")
    assert refused(await client.get(CONTACTS_URL, params={"page_size": 1}), "base-not-granted")
    assert (await client.get(CONTACTS_URL, params={"page_size": 1}, headers=bearer(org=other))).status_code == 200
