from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.auth_service.conftest import bearer, register


async def test_register_then_me(client: AsyncTestClient[Litestar]) -> None:
    tokens = await register(client)
    response = await client.get("/api/v1/auth/me", headers=bearer(tokens))
    assert response.status_code == 200
    assert response.json()["email"] == "ada@example.com"
