"""Routes the older consolidated platform service answered (``/auth/*`` and the un-prefixed
legacy ones), kept for its clients: each is translated to the platform's ``/api/v1`` route,
admitted like any proxied request (token, revocation, rate limit), and its answer reshaped to
the old wire contract (../shared/LEGACY-CONTRACT.md). Every answer is marked deprecated.

With ``REQUIRE_API_KEY`` the ``X-API-Key`` header must match ``API_KEY`` (constant-time).
"""

import hmac
import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody
from litestar.types import Message, Receive, Scope

from gateway.proxy import ForwardRequest, RequestBody
from gateway.services import Admission
from shared.errors import Forbidden, ProblemError, ServiceUnavailable, Unauthorized
from shared.http import client_ip, ensure_request_id

# RFC 9745: the date from which these routes are deprecated (2026-12-01), and where to go instead.
DEPRECATION = "@1796083200"
AUTH = "/api/v1/auth"
USERS = "/api/v1/users"


class LegacyUser(msgspec.Struct):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    is_active: bool
    created_at: datetime


class LegacyTokenResponse(msgspec.Struct):
    access_token: str
    expires_in: int
    user: LegacyUser
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a token type, not a secret


class LegacyVerifyResponse(msgspec.Struct):
    valid: bool
    user: LegacyUser


class LegacyRegisterRequest(msgspec.Struct):
    email: str
    password: str
    first_name: str | None = None
    last_name: str | None = None


class LegacyLoginRequest(msgspec.Struct):
    email: str
    password: str


class LegacyProfileUpdate(msgspec.Struct):
    email: str  # required by the old service, never changed by this call
    first_name: str | None = None
    last_name: str | None = None


class LegacyMessage(msgspec.Struct):
    message: str


class ServiceReply(msgspec.Struct):
    """What a platform route answered, and the rate-limit headers the caller's request earned."""

    status: int
    body: Any
    headers: dict[str, str]
    rate_limit_headers: dict[str, str]


class InvalidApiKey(Unauthorized):
    code = "invalid-api-key"

    def __init__(self) -> None:
        super().__init__("A valid X-API-Key header is required.", headers={"WWW-Authenticate": "ApiKey"})


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    expected: str | None = connection.app.state.api_key
    if expected is None:
        return
    given = connection.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidApiKey()


async def mark_deprecated(message: Message, scope: Scope) -> None:
    """``before_send``: ``Deprecation`` and the successor's ``Link`` on every answer of a legacy route,
    errors included."""
    if message["type"] != "http.response.start":
        return
    handler = scope.get("route_handler")
    successor = handler.opt.get("successor") if handler is not None else None
    if successor:
        message["headers"] = [
            *message.get("headers", []),
            (b"deprecation", DEPRECATION.encode()),
            (b"link", f'<{successor}>; rel="successor-version"'.encode()),
        ]


async def call_platform(request: Request[Any, Any, State], method: str, path: str, body: Any = None) -> ServiceReply:
    """``method path`` on the platform, as the gateway would proxy it for this client."""
    admission = await admit(request, method, path)
    return await forward(request, admission, method, path, body)


async def admit(request: Request[Any, Any, State], method: str, path: str) -> Admission:
    """The caller's claims and rate-limit decision for ``method path`` (raises 401/429 as a proxied route would)."""
    ip = client_ip(request.scope, request.app.state.settings.trusted_proxy_list)
    admission: Admission = await request.app.state.gatekeeper.admit(
        method, path, request.headers.get("authorization"), ip
    )
    return admission


async def forward(
    request: Request[Any, Any, State], admission: Admission, method: str, path: str, body: Any = None
) -> ServiceReply:
    state, scope = request.app.state, request.scope
    route = state.routes.match(path)
    if route is None:
        raise ServiceUnavailable(f"No service answers {path} on this gateway.")
    payload = None if body is None else msgspec.json.encode(body)
    headers = [(b"accept", b"application/json")]
    if payload is not None:
        headers.append((b"content-type", b"application/json"))
    if authorization := request.headers.get("authorization"):
        headers.append((b"authorization", authorization.encode("latin-1")))
    if user_agent := request.headers.get("user-agent"):
        headers.append((b"user-agent", user_agent.encode("latin-1")))
    outgoing = ForwardRequest(
        method=method,
        target=path,
        headers=headers,
        client_ip=client_ip(scope, state.settings.trusted_proxy_list),
        proto=scope.get("scheme", "http"),
        host=request.headers.get("host", ""),
        request_id=ensure_request_id(scope),
        body=None if payload is None else RequestBody(_receive_once(payload), len(payload)),
    )
    collected = _Collected()
    await state.upstreams[route.prefix].forward(outgoing, collected.send, [])
    return ServiceReply(
        status=collected.status,
        body=msgspec.json.decode(collected.body) if collected.body else None,
        headers=collected.headers,
        rate_limit_headers=admission.decision.headers(admission.policy),
    )


def _receive_once(payload: bytes) -> Receive:
    async def receive() -> Any:
        return {"type": "http.request", "body": payload, "more_body": False}

    return receive


class _Collected:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def raise_for_status(reply: ServiceReply, statuses: dict[int, int] | None = None, detail: str | None = None) -> None:
    """An error answer becomes the same problem for the legacy client, with the status it expects
    (``statuses`` maps platform → legacy) and, where given, the message it knew."""
    if reply.status < 400:
        return
    upstream = reply.body if isinstance(reply.body, dict) else {}
    headers = dict(reply.rate_limit_headers)
    for name in ("retry-after", "www-authenticate"):
        if name in reply.headers:
            headers[name] = reply.headers[name]
    raise ProblemError(
        detail or str(upstream.get("detail") or "The request failed."),
        status_code=(statuses or {}).get(reply.status, reply.status),
        code=upstream.get("code"),
        headers=headers,
    )


def legacy_user(user: dict[str, Any]) -> LegacyUser:
    return msgspec.convert(user, LegacyUser)


def token_response(reply: ServiceReply) -> Response[LegacyTokenResponse]:
    body = reply.body
    tokens = LegacyTokenResponse(
        access_token=body["access_token"], expires_in=body["expires_in"], user=legacy_user(body["user"])
    )
    return Response(tokens, status_code=200, headers=reply.rate_limit_headers)


LEGACY = {"exclude_from_auth": True}
REGISTER_ERRORS = {409: 400, 422: 400}  # the old service answered 400 for a taken email or a weak password


class LegacyAuthController(Controller):
    """The consolidated platform service's auth and profile routes (deprecated: use ``/api/v1``)."""

    tags = ["legacy"]
    guards = [require_api_key]

    @post(
        ["/auth/register", "/register"], operation_id="legacy_register", opt={**LEGACY, "successor": f"{AUTH}/register"}
    )
    async def register(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyRegisterRequest]
    ) -> Response[LegacyTokenResponse]:
        """Create an account; answers with an access token and the user."""
        reply = await call_platform(request, "POST", f"{AUTH}/register", data)
        raise_for_status(reply, REGISTER_ERRORS)
        return token_response(reply)

    @post(["/auth/login", "/login"], operation_id="legacy_login", opt={**LEGACY, "successor": f"{AUTH}/login"})
    async def login(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyLoginRequest]
    ) -> Response[LegacyTokenResponse]:
        """Sign in; a wrong email or password is 401 ``Invalid credentials``."""
        reply = await call_platform(request, "POST", f"{AUTH}/login", data)
        raise_for_status(reply, detail="Invalid credentials" if reply.status == 401 else None)
        return token_response(reply)

    @get(["/auth/verify", "/verify"], operation_id="legacy_verify", opt={**LEGACY, "successor": f"{AUTH}/verify"})
    async def verify(self, request: Request[Any, Any, State]) -> Response[LegacyVerifyResponse]:
        """Whether the bearer token is valid, with its user."""
        reply = await call_platform(request, "GET", f"{AUTH}/me")
        raise_for_status(reply)
        verified = LegacyVerifyResponse(valid=True, user=legacy_user(reply.body))
        return Response(verified, headers=reply.rate_limit_headers)

    @get(["/auth/profile", "/profile"], operation_id="legacy_get_profile", opt={**LEGACY, "successor": f"{USERS}/me"})
    async def profile(self, request: Request[Any, Any, State]) -> Response[LegacyUser]:
        """The caller's profile."""
        reply = await call_platform(request, "GET", f"{USERS}/me")
        raise_for_status(reply)
        return Response(legacy_user(reply.body), headers=reply.rate_limit_headers)

    @put(
        ["/auth/profile", "/profile"], operation_id="legacy_update_profile", opt={**LEGACY, "successor": f"{USERS}/me"}
    )
    async def update_profile(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyProfileUpdate]
    ) -> Response[LegacyUser]:
        """Change the caller's names (the email in the body is required but not changed, as before)."""
        changes = {name: value for name in ("first_name", "last_name") if (value := getattr(data, name)) is not None}
        reply = await call_platform(request, "PATCH", f"{USERS}/me", changes)
        raise_for_status(reply)
        return Response(legacy_user(reply.body), headers=reply.rate_limit_headers)

    @delete(
        "/auth/users/{user_id:uuid}",
        operation_id="legacy_deactivate_user",
        status_code=200,
        opt={**LEGACY, "successor": f"{USERS}/{{id}}"},
    )
    async def deactivate(
        self, request: Request[Any, Any, State], user_id: FromPath[uuid.UUID]
    ) -> Response[LegacyMessage]:
        """Close the caller's own account (another user's id is 403, as before)."""
        path = f"{USERS}/{user_id}"
        admission = await admit(request, "DELETE", path)
        if admission.user_id != str(user_id):
            raise Forbidden("Only your own account can be deactivated.")
        reply = await forward(request, admission, "DELETE", path)
        raise_for_status(reply)
        return Response(LegacyMessage("User account deactivated successfully"), headers=reply.rate_limit_headers)
