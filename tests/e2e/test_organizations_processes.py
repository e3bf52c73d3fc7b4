"""Organisations in the distributed mode: a real auth-service process (mailing invitations through
a real SMTP server in this test's process) behind a real gateway process, on PostgreSQL and
Redis. A member removed from an organisation is refused at the gateway on their next request with
the token they hold, and their refresh gives a token without the organisation."""

from typing import Any

import httpx
import jwt

from tests.conftest import assert_problem
from tests.e2e.processes import Stack, mailed_invitation
from tests.mail_server import MailServer

AUTH = "/api/v1/auth"
PASSWORD = "a long enough passphrase"


def claims(tokens: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return decoded


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_a_removed_member_is_refused_at_the_gateway_and_refreshes_without_the_organisation(
    stack: Stack, mail_server: MailServer
) -> None:
    auth = stack.auth(SMTP_URL=mail_server.url, SMTP_CA_FILE=mail_server.ca_file, SITE_URL="https://app.example.com")
    gateway = stack.gateway_in_front(
        {"AUTH_SERVICE_URL": auth},
        AUTH_RATE_LIMIT_BURST="50",  # one client makes every call of the flow
    )

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        ada = client.post(f"{AUTH}/register", json={"email": "ada@example.com", "password": PASSWORD}).json()
        org_id = claims(ada)["tid"]
        org_url = f"{AUTH}/orgs/{org_id}"
        invitation = mailed_invitation(client, org_url, bearer(ada), mail_server.inbox, "carol@example.com", "member")
        joined = client.post(
            f"{AUTH}/register",
            json={"email": "carol@example.com", "password": PASSWORD, "invitation": invitation},
        )
        assert joined.status_code == 201, joined.text
        carol = joined.json()
        assert (claims(carol)["tid"], claims(carol)["org_role"]) == (org_id, "member")
        assert client.get(f"{AUTH}/orgs/{org_id}/members", headers=bearer(carol)).status_code == 200

        removed = client.delete(f"{AUTH}/orgs/{org_id}/members/{carol['user']['id']}", headers=bearer(ada))
        assert removed.status_code == 204, removed.text

        assert_problem(client.get(f"{AUTH}/me", headers=bearer(carol)), 401)
        refreshed = client.post(f"{AUTH}/refresh", json={"refresh_token": carol["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        assert "tid" not in claims(refreshed.json()) and "org_role" not in claims(refreshed.json())
        assert client.get(f"{AUTH}/me", headers=bearer(refreshed.json())).status_code == 200
        gone = client.get(f"{AUTH}/orgs/{org_id}", headers=bearer(refreshed.json()))
        assert_problem(gone, 404)
