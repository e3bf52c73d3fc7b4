"""The older platform service's clients, unchanged, against the gateway process in front of a real
auth-service process over HTTP: the same answers as in-process (tests/gateway/test_compat.py)."""

import httpx

from tests.conftest import assert_problem
from tests.e2e.processes import Stack

API_KEY = "e2e-legacy-api-key-0123456789"
CREDENTIALS = {"email": "ada@example.com", "password": "a long enough passphrase"}


def test_a_legacy_client_registers_logs_in_and_verifies_through_the_gateway(stack: Stack) -> None:
    gateway = stack.gateway_in_front({"AUTH_SERVICE_URL": stack.auth()}, API_KEY=API_KEY)

    with httpx.Client(base_url=gateway.url, timeout=10, headers={"X-API-Key": API_KEY}) as client:
        registered = client.post("/auth/register", json={**CREDENTIALS, "first_name": "Ada"})
        assert registered.status_code == 200, registered.text
        assert registered.json()["user"]["first_name"] == "Ada"
        assert registered.headers["deprecation"]

        logged_in = client.post("/login", json=CREDENTIALS)
        assert logged_in.status_code == 200, logged_in.text
        token = logged_in.json()["access_token"]
        assert logged_in.json()["token_type"] == "bearer"

        verified = client.get("/verify", headers={"Authorization": f"Bearer {token}"})
        assert verified.status_code == 200, verified.text
        assert verified.json() == {"valid": True, "user": logged_in.json()["user"]}

        assert_problem(client.post("/login", json={**CREDENTIALS, "password": "wrong password!"}), 401)
        refused = client.post("/login", json=CREDENTIALS, headers={"X-API-Key": "wrong"})
        assert assert_problem(refused, 401)["code"] == "invalid-api-key"
