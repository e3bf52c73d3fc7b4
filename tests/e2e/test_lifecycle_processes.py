"""The account lifecycle in the distributed mode: a real auth-service process mailing through a
real SMTP server (in this test's process: STARTTLS, a password) and a gateway process in front,
on PostgreSQL and Redis. Verification, password reset, the Go logout and JWT_EXPIRES_IN, each as
a client would do it, over HTTP."""

import httpx

from tests.conftest import assert_problem
from tests.e2e.processes import Stack, wait_for_mail
from tests.mail_server import MailServer, token_in

AUTH = "/api/v1/auth"
API_KEY = "e2e-lifecycle-api-key-0123456789"
CREDENTIALS = {"email": "ada@example.com", "password": "a long enough passphrase"}
NEW_PASSWORD = "another long passphrase"


def test_verify_reset_and_sign_out_through_the_gateway(stack: Stack, mail_server: MailServer) -> None:
    auth = stack.auth(
        SMTP_URL=mail_server.url,
        SMTP_CA_FILE=mail_server.ca_file,
        SITE_URL="https://app.example.com",
        JWT_EXPIRES_IN="24h",
    )
    gateway = stack.gateway_in_front(
        {"AUTH_SERVICE_URL": auth},
        API_KEY=API_KEY,
        AUTH_RATE_LIMIT_BURST="50",  # one client makes every call of the flow
    )

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        registered = client.post(f"{AUTH}/register", json=CREDENTIALS)
        assert registered.status_code == 201, registered.text
        link = token_in(wait_for_mail(mail_server.inbox, "ada@example.com", 1))
        verified = client.post(f"{AUTH}/email/verify", json={"token": link})
        assert verified.status_code == 200, verified.text
        assert verified.json()["email_verified"] is True

        forgot = client.post(f"{AUTH}/password/forgot", json={"email": "ada@example.com"})
        assert forgot.status_code == 202, forgot.text
        reset_link = token_in(wait_for_mail(mail_server.inbox, "ada@example.com", 2))
        reset = client.post(f"{AUTH}/password/reset", json={"token": reset_link, "new_password": NEW_PASSWORD})
        assert reset.status_code == 204, reset.text
        # The gateway itself refuses the access token of a session the reset ended.
        old = {"Authorization": f"Bearer {registered.json()['access_token']}"}
        assert_problem(client.get(f"{AUTH}/me", headers=old), 401)

        signed_in = client.post(f"{AUTH}/login", json={**CREDENTIALS, "password": NEW_PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        refresh_token = signed_in.json()["refresh_token"]
        assert client.post(f"{AUTH}/logout", json={"refresh_token": refresh_token}).status_code == 204
        assert_problem(client.post(f"{AUTH}/refresh", json={"refresh_token": refresh_token}), 401)

        legacy = client.post("/login", json={**CREDENTIALS, "password": NEW_PASSWORD}, headers={"X-API-Key": API_KEY})
        assert legacy.status_code == 200, legacy.text
        assert legacy.json()["expires_in"] == 86400
