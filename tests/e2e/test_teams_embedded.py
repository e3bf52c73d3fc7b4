"""Teams across the whole platform, as its users meet them: the embedded platform as a real process
(every service behind the gateway, the Airtable emulator, grants required), invitations mailed
through a real SMTP server, pyairtable pointed at the gateway's Airtable mirror.

Two organisations: Ada's (Ada owner, Carol invited as viewer) and Bob's. A platform admin grants
Ada's organisation one base to write and one to read. Then each person tries what their role and
organisation allow and what they do not; Ada removes Carol; the owners read their own team's
members, usage and audit log and nothing of the other team's."""

from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from pyairtable import Api
from requests.exceptions import HTTPError

from tests.airtable_gateway.emulator_fixture import CRM_BASE, OPS_BASE
from tests.conftest import assert_problem
from tests.e2e.processes import (
    FAST_ARGON2,
    Processes,
    Service,
    environment,
    free_port,
    mailed_invitation,
    wait_for,
)
from tests.mail_server import MailServer

API = "/api/v1"
PASSWORD = "a long enough passphrase"
CRM, OPS = CRM_BASE, OPS_BASE


@pytest.fixture
def platform(tmp_path: Path, processes: Processes, mail_server: MailServer) -> tuple[Service, dict[str, str]]:
    port = free_port()
    env = environment(
        tmp_path,
        GATEWAY_PORT=str(port),
        AIRTABLE_GRANT_ALL="",  # grants as in production: none until a platform admin gives one
        SMTP_URL=mail_server.url,
        SMTP_CA_FILE=mail_server.ca_file,
        SITE_URL="https://app.example.com",
        RATE_LIMIT_BURST="500",
        AUTH_RATE_LIMIT_BURST="100",
        **FAST_ARGON2,
    )
    assert processes.python("migrate", ["-m", "embedded", "migrate"], env, port).process.wait(120) == 0
    create_admin = ["-m", "auth_service", "create-admin", "--email", "root@example.com", "--password-stdin"]
    admin = processes.python("create-admin", create_admin, env, port, wait_stdin=True)
    admin.process.communicate(PASSWORD.encode(), timeout=120)
    assert admin.process.returncode == 0, admin.log_tail()
    served = processes.python("platform", ["-m", "embedded", "serve"], env, port)
    served.wait_healthy(60)
    return served, env


def claims(tokens: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return decoded


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def base_ids(client: httpx.Client, tokens: dict[str, Any]) -> list[str]:
    response = client.get(f"{API}/airtable/bases", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return sorted(base["id"] for base in response.json()["bases"])


def airtable_status(action: Any) -> int:
    """pyairtable's HTTP status for an action (200 when it succeeds)."""
    try:
        action()
    except HTTPError as exc:
        return int(exc.response.status_code)
    return 200


def test_two_teams_each_reach_only_what_their_roles_and_grants_allow(
    platform: tuple[Service, dict[str, str]], mail_server: MailServer
) -> None:
    served, _ = platform
    with httpx.Client(base_url=served.url, timeout=20) as client:
        root = client.post(f"{API}/auth/login", json={"email": "root@example.com", "password": PASSWORD}).json()
        ada = client.post(f"{API}/auth/register", json={"email": "ada@example.com", "password": PASSWORD}).json()
        client.post(f"{API}/auth/register", json={"email": "bob@example.com", "password": PASSWORD})
        bob = client.post(f"{API}/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).json()
        team, other_team = claims(ada)["tid"], claims(bob)["tid"]
        assert team != other_team and claims(ada)["org_role"] == claims(bob)["org_role"] == "owner"

        # Carol joins Ada's team as a viewer, by the mailed invitation's link.
        team_url = f"{API}/auth/orgs/{team}"
        invitation = mailed_invitation(client, team_url, bearer(ada), mail_server.inbox, "carol@example.com", "viewer")
        carol = client.post(
            f"{API}/auth/register", json={"email": "carol@example.com", "password": PASSWORD, "invitation": invitation}
        ).json()
        assert (claims(carol)["tid"], claims(carol)["org_role"]) == (team, "viewer")

        # Nobody reaches a base before a grant; only a platform admin grants.
        assert base_ids(client, ada) == []
        assert_problem(
            client.put(f"{API}/airtable/grants/{team}/{CRM}", json={"access": "write"}, headers=bearer(ada)), 403
        )
        for base, access in ((CRM, "write"), (OPS, "read")):
            granted = client.put(f"{API}/airtable/grants/{team}/{base}", json={"access": access}, headers=bearer(root))
            assert granted.status_code == 201, granted.text
        assert base_ids(client, ada) == sorted([CRM, OPS])
        assert base_ids(client, bob) == []

        # pyairtable through the gateway's mirror, each person with their own platform token.
        def table(tokens: dict[str, Any], base: str, name: str) -> Any:
            return Api(tokens["access_token"], endpoint_url=f"{served.url}{API}/airtable").table(base, name)

        assert len(table(ada, CRM, "Contacts").all(max_records=3)) == 3
        created = table(ada, CRM, "Contacts").create({"Name": "Made by Ada"})
        assert airtable_status(lambda: table(ada, OPS, "Tasks").all(max_records=1)) == 200
        assert airtable_status(lambda: table(ada, OPS, "Tasks").create({"Name": "x"})) == 403  # a read grant
        assert airtable_status(lambda: table(carol, CRM, "Contacts").all(max_records=1)) == 200
        assert airtable_status(lambda: table(carol, CRM, "Contacts").create({"Name": "x"})) == 403  # a viewer
        assert airtable_status(lambda: table(bob, CRM, "Contacts").all(max_records=1)) == 403  # not his team's
        assert airtable_status(lambda: table(bob, CRM, "Contacts").delete(created["id"])) == 403

        # Ada removes Carol: her token stops at the gateway, her refresh has no team.
        removed = client.delete(f"{API}/auth/orgs/{team}/members/{carol['user']['id']}", headers=bearer(ada))
        assert removed.status_code == 204, removed.text
        assert_problem(client.get(f"{API}/airtable/bases", headers=bearer(carol)), 401)
        carol = client.post(f"{API}/auth/refresh", json={"refresh_token": carol["refresh_token"]}).json()
        assert "tid" not in claims(carol)
        assert airtable_status(lambda: table(carol, CRM, "Contacts").all(max_records=1)) == 403

        # Team views: the owner sees their team, never the other one.
        def members(tokens: dict[str, Any], org: str) -> httpx.Response:
            return client.get(f"{API}/users/orgs/{org}/members", headers=bearer(tokens))

        listed = wait_for(lambda: ok_or_none(members(ada, team)), "Ada's team in the users service")
        assert [m["user_id"] for m in listed.json()["members"]] == [ada["user"]["id"]]
        assert_problem(members(bob, team), 404)
        assert client.get(f"{API}/analytics/usage/orgs/{team}", headers=bearer(ada)).status_code == 200
        assert_problem(client.get(f"{API}/analytics/usage/orgs/{team}", headers=bearer(bob)), 404)

        actions = wait_for(lambda: audit_actions(client, ada, {"member.removed", "grant.created"}), "the audit log")
        assert {"invitation.created", "member.joined", "member.removed", "grant.created"} <= actions
        assert_problem(client.get(f"{API}/analytics/audit", params={"organization_id": team}, headers=bearer(bob)), 403)
        bobs = client.get(f"{API}/analytics/audit", params={"limit": 500}, headers=bearer(bob)).json()["entries"]
        assert bobs and all(entry["organization_id"] == other_team for entry in bobs), "his sign-in, nothing of Ada's"
        everything = client.get(f"{API}/analytics/audit", params={"limit": 500}, headers=bearer(root)).json()["entries"]
        assert {entry["organization_id"] for entry in everything} >= {team, other_team}


def ok_or_none(response: httpx.Response) -> httpx.Response | None:
    return response if response.status_code == 200 and response.json()["members"] else None


def audit_actions(client: httpx.Client, tokens: dict[str, Any], needed: set[str]) -> set[str] | None:
    response = client.get(f"{API}/analytics/audit", params={"limit": 500}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    actions = {entry["action"] for entry in response.json()["entries"]}
    return actions if needed <= actions else None
