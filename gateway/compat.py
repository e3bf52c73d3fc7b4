"""Routes the older consolidated platform service answered (``/auth/*`` and the un-prefixed
legacy ones), kept for its clients: each is translated to the platform's ``/api/v1`` route,
admitted like any proxied request (token, revocation, rate limit), and its answer reshaped to
the old wire contract (../shared/LEGACY-CONTRACT.md). Every answer is marked deprecated.

With ``REQUIRE_API_KEY`` the ``X-API-Key`` header must match ``API_KEY`` (constant-time).
"""

import hmac
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import Message, OperationIDCreator, Scope

from gateway.admission import Admission
from gateway.compat_schemas import (
    LegacyCosts,
    LegacyCostSummary,
    LegacyDashboard,
    LegacyEndpointCount,
    LegacyEvent,
    LegacyEventCreate,
    LegacyLoginRequest,
    LegacyMessage,
    LegacyMetric,
    LegacyMetricBatch,
    LegacyMetricCreate,
    LegacyMetricList,
    LegacyPeriod,
    LegacyProfileUpdate,
    LegacyRegisterRequest,
    LegacyTokenResponse,
    LegacyUsage,
    LegacyUser,
    LegacyUserCost,
    LegacyVerifyResponse,
    as_text,
    legacy_event,
    legacy_metric,
    legacy_user,
    platform_metric,
)
from gateway.proxy import CollectedAnswer, ForwardRequest, RequestBody
from shared.errors import Forbidden, ProblemError, ServiceUnavailable, Unauthorized
from shared.http import CheckedBodyRequest, client_ip, ensure_request_id

# RFC 9745: the date from which these routes are deprecated (2026-12-01), and where to go instead.
DEPRECATION = "@1796083200"
AUTH = "/api/v1/auth"
ANALYTICS = "/api/v1/analytics"
ADMISSION = "legacy_admission"
DEPLOYMENT_KEY_ID = "deployment"  # the key_id of the tokens the auth service issues for API_KEY
USERS = "/api/v1/users"


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


async def admit_caller(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: admit the caller as the route's successor would (token, revocation, rate limit), before
    the body is read, so an anonymous or limited client learns nothing from validation errors."""
    state = connection.app.state
    ip = client_ip(connection.scope, state.settings.trusted_proxy_list)
    method = connection.scope["method"]  # type: ignore[typeddict-item]  # guards of HTTP routes see HTTP scopes
    admission: Admission = await state.gatekeeper.admit(
        method,
        handler.opt["successor"],
        connection.headers.get("authorization"),
        ip,
        connection.headers.get("x-api-key"),
        ensure_request_id(connection.scope),
        # The deployment's key alone reaches the old analytics routes, as the older service's backends used it.
        legacy=handler.opt["successor"].startswith(ANALYTICS),
    )
    connection.scope["state"][ADMISSION] = admission


def admission_of(request: Request[Any, Any, State]) -> Admission:
    admission: Admission = request.scope["state"][ADMISSION]
    return admission


async def call_platform(
    request: Request[Any, Any, State],
    method: str,
    path: str,
    body: Any = None,
    query: dict[str, Any] | None = None,
) -> ServiceReply:
    """``method path`` on the platform for the admitted caller, as the gateway would proxy it."""
    admission = admission_of(request)
    state, scope = request.app.state, request.scope
    route = state.routes.match(path)
    if route is None:
        raise ServiceUnavailable(f"No service answers {path} on this gateway.")
    payload = None if body is None else msgspec.json.encode(body)
    headers = [(b"accept", b"application/json")]
    if payload is not None:
        headers.append((b"content-type", b"application/json"))
    if authorization := admission.authorization or request.headers.get("authorization"):
        headers.append((b"authorization", authorization.encode("latin-1")))
    if user_agent := request.headers.get("user-agent"):
        headers.append((b"user-agent", user_agent.encode("latin-1")))
    outgoing = ForwardRequest(
        method=method,
        target=_with_query(path, query),
        headers=headers,
        client_ip=client_ip(scope, state.settings.trusted_proxy_list),
        proto=scope.get("scheme", "http"),
        host=request.headers.get("host", ""),
        request_id=ensure_request_id(scope),
        body=None if payload is None else RequestBody.buffered(payload, len(payload)),
    )
    collected, started = CollectedAnswer(), time.perf_counter()
    try:
        await state.upstreams[route.prefix].forward(outgoing, collected.send, [])
    except HTTPException as exc:
        collected.status = exc.status_code
        raise
    finally:
        elapsed = time.perf_counter() - started
        state.usage.record(
            admission.user_id,
            method,
            route.prefix,
            collected.status,
            elapsed,
            outgoing.request_id,
            scope,
            admission.organization_id,
            admission.key_id,
        )
    return ServiceReply(
        status=collected.status,
        body=msgspec.json.decode(collected.body) if collected.body else None,
        headers=collected.headers,
        rate_limit_headers=admission.decision.headers(admission.policy),
    )


def _with_query(path: str, query: dict[str, Any] | None) -> str:
    given = {name: value for name, value in (query or {}).items() if value is not None}
    return f"{path}?{urlencode(given)}" if given else path


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


# The auth service issues the older platform's token lifetime (its JWT_EXPIRES_IN) to these routes.
LEGACY_LIFETIME = {"lifetime": "legacy"}


def token_response(reply: ServiceReply) -> Response[LegacyTokenResponse | LegacyMessage]:
    body = reply.body
    if reply.status == 202:  # REQUIRE_VERIFIED_EMAIL: no tokens until the address is confirmed
        return Response(LegacyMessage(message=body["detail"]), status_code=202, headers=reply.rate_limit_headers)
    if body.get("mfa_required"):  # the older service had no second factor: its clients get no challenge
        raise Forbidden(
            "Two-factor sign-in is on for this account: sign in at POST /api/v1/auth/login, then "
            "POST /api/v1/auth/login/mfa.",
            code="mfa-required",
        )
    tokens = LegacyTokenResponse(
        access_token=body["access_token"],
        expires_in=body["expires_in"],
        user=legacy_user(body["user"]),
        refresh_token=body["refresh_token"],
    )
    return Response(tokens, status_code=200, headers=reply.rate_limit_headers)


LEGACY = {"exclude_from_auth": True}
PREFIXES = ("auth", "analytics")


def per_path(operation_id: str) -> OperationIDCreator:
    """A route served at two paths (``/auth/login`` and ``/login``) is two OpenAPI operations, each
    needing its own id: ``operation_id`` for the prefixed path, ``<operation_id>_unprefixed`` for
    the other."""

    def for_path(_handler: Any, _method: Any, components: list[Any]) -> str:
        prefixed = bool(components) and components[0] in PREFIXES
        return operation_id if prefixed else f"{operation_id}_unprefixed"

    return for_path


def legacy_route(
    route: type[HTTPRouteHandler], paths: str | list[str], operation_id: str, successor: str, **options: Any
) -> HTTPRouteHandler:
    """``route`` (``get``, ``post`` ...) for a route of the older service: its ``successor`` (the
    platform route it is translated to, which also names it in the deprecation headers), and an
    OpenAPI id per path where it is served at two (``per_path``)."""
    two_paths = isinstance(paths, list) and len(paths) > 1
    return route(
        paths,
        operation_id=per_path(operation_id) if two_paths else operation_id,
        opt={**LEGACY, "successor": successor},
        **options,
    )


# The older service (pydantic) converted a JSON "5" into the number 5 where its schema said number;
# its clients keep that. The platform's own routes decode bodies strictly (shared.http.StrictBodyRequest);
# both pass the kernel's door first (nesting limit, no NUL character).
LENIENT_BODIES = CheckedBodyRequest
REGISTER_ERRORS = {409: 400, 422: 400}  # the old service answered 400 for a taken email or a weak password


class LegacyController(Controller):
    """Routes of the consolidated platform service: the API key, then the caller's admission."""

    tags = ["legacy"]
    guards = [require_api_key, admit_caller]
    request_class = LENIENT_BODIES


class LegacyAuthController(LegacyController):
    """The consolidated platform service's auth and profile routes (deprecated: use ``/api/v1``)."""

    @legacy_route(post, ["/auth/register", "/register"], "legacy_register", f"{AUTH}/register")
    async def register(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyRegisterRequest]
    ) -> Response[LegacyTokenResponse | LegacyMessage]:
        """Create an account; answers with an access token and the user (202 and a message instead
        when addresses must be verified first)."""
        reply = await call_platform(request, "POST", f"{AUTH}/register", data, LEGACY_LIFETIME)
        raise_for_status(reply, REGISTER_ERRORS)
        return token_response(reply)

    @legacy_route(post, ["/auth/login", "/login"], "legacy_login", f"{AUTH}/login")
    async def login(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyLoginRequest]
    ) -> Response[LegacyTokenResponse | LegacyMessage]:
        """Sign in; a wrong email or password is 401 ``Invalid credentials``."""
        reply = await call_platform(request, "POST", f"{AUTH}/login", data, LEGACY_LIFETIME)
        raise_for_status(reply, detail="Invalid credentials" if reply.status == 401 else None)
        return token_response(reply)

    @legacy_route(get, ["/auth/verify", "/verify"], "legacy_verify", f"{AUTH}/verify")
    async def verify(self, request: Request[Any, Any, State]) -> Response[LegacyVerifyResponse]:
        """Whether the bearer token is valid, with its user."""
        reply = await call_platform(request, "GET", f"{AUTH}/me")
        raise_for_status(reply)
        verified = LegacyVerifyResponse(valid=True, user=legacy_user(reply.body))
        return Response(verified, headers=reply.rate_limit_headers)

    @legacy_route(get, ["/auth/profile", "/profile"], "legacy_get_profile", f"{USERS}/me")
    async def profile(self, request: Request[Any, Any, State]) -> Response[LegacyUser]:
        """The caller's profile."""
        reply = await call_platform(request, "GET", f"{USERS}/me")
        raise_for_status(reply)
        return Response(legacy_user(reply.body), headers=reply.rate_limit_headers)

    @legacy_route(put, ["/auth/profile", "/profile"], "legacy_update_profile", f"{USERS}/me")
    async def update_profile(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyProfileUpdate]
    ) -> Response[LegacyUser]:
        """Change the caller's names (the email in the body is required but not changed, as before)."""
        changes = {name: value for name in ("first_name", "last_name") if (value := getattr(data, name)) is not None}
        reply = await call_platform(request, "PATCH", f"{USERS}/me", changes)
        raise_for_status(reply)
        return Response(legacy_user(reply.body), headers=reply.rate_limit_headers)

    @legacy_route(delete, "/auth/users/{user_id:uuid}", "legacy_deactivate_user", f"{USERS}/{{id}}", status_code=200)
    async def deactivate(
        self, request: Request[Any, Any, State], user_id: FromPath[uuid.UUID]
    ) -> Response[LegacyMessage]:
        """Close the caller's own account (another user's id is 403, as before)."""
        if admission_of(request).user_id != str(user_id):
            raise Forbidden("Only your own account can be deactivated.")
        reply = await call_platform(request, "DELETE", f"{USERS}/{user_id}")
        raise_for_status(reply)
        return Response(LegacyMessage("User account deactivated successfully"), headers=reply.rate_limit_headers)


# -- the old analytics routes -----------------------------------------------------------------

PERIODS = {"daily": "day", "weekly": "week", "monthly": "month"}
Days = Annotated[int, QueryParameter(ge=1, le=366)]


# The older service's backends send their own users' ids (integers there). With the deployment's
# API_KEY alone the caller is the deployment, not a platform user: such an id is kept as
# ``external_user_id`` (an event property, a metric label) and never taken for a platform user's.
EXTERNAL_USER = "external_user_id"


def is_deployment(request: Request[Any, Any, State]) -> bool:
    claims = admission_of(request).claims
    return claims is not None and claims.get("key_id") == DEPLOYMENT_KEY_ID


def with_external_user(values: dict[str, Any], user_id: str | int | None) -> dict[str, Any]:
    return values if user_id is None else {**values, EXTERNAL_USER: as_text(user_id)}


def caller_metric(metric: LegacyMetricCreate, deployment: bool) -> dict[str, Any]:
    """The platform's metric for ``metric``; sent by the deployment (``is_deployment``), its
    ``user_id`` is the caller's own system's and becomes a label."""
    platform = platform_metric(metric)
    if deployment:
        platform.update(user_id=None, labels=with_external_user(metric.labels, metric.user_id))
    return platform


def _answer(content: Any, reply: ServiceReply) -> Response[Any]:
    return Response(content, status_code=200, headers=reply.rate_limit_headers)


class LegacyAnalyticsController(LegacyController):
    """The consolidated platform service's analytics routes (deprecated: use ``/api/v1/analytics``)."""

    @legacy_route(post, ["/analytics/events", "/events"], "legacy_track_event", f"{ANALYTICS}/events")
    async def track_event(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyEventCreate]
    ) -> Response[LegacyEvent]:
        """Record one event for the caller (another user's id needs the admin role)."""
        event_id, now = str(uuid.uuid4()), datetime.now(UTC)
        event = {
            "event_id": event_id,
            "event_type": data.event_type,
            "user_id": as_text(data.user_id),
            "session_id": data.session_id,
            "properties": data.event_data,
            "occurred_at": now,
        }
        stored = event
        if is_deployment(request):
            stored = {**event, "user_id": None, "properties": with_external_user(data.event_data, data.user_id)}
        reply = await call_platform(request, "POST", f"{ANALYTICS}/events", stored)
        raise_for_status(reply)
        return _answer(legacy_event({**event, "user_id": event["user_id"] or admission_of(request).user_id}), reply)

    @legacy_route(post, ["/analytics/metrics"], "legacy_record_metric", f"{ANALYTICS}/metrics")
    async def record_metric(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyMetricCreate]
    ) -> Response[LegacyMetric]:
        """Record one metric value."""
        deployment = is_deployment(request)
        reply = await call_platform(request, "POST", f"{ANALYTICS}/metrics", caller_metric(data, deployment))
        raise_for_status(reply)
        if deployment:
            return _answer(legacy_metric({**reply.body, "user_id": as_text(data.user_id)}), reply)
        return _answer(legacy_metric(reply.body), reply)

    @legacy_route(post, "/analytics/metrics/batch", "legacy_record_metrics", f"{ANALYTICS}/metrics/batch")
    async def record_metrics(
        self, request: Request[Any, Any, State], data: JSONBody[LegacyMetricBatch]
    ) -> Response[LegacyMessage]:
        """Record several metric values at once."""
        deployment = is_deployment(request)
        batch = {"metrics": [caller_metric(metric, deployment) for metric in data.metrics]}
        reply = await call_platform(request, "POST", f"{ANALYTICS}/metrics/batch", batch)
        raise_for_status(reply)
        return _answer(LegacyMessage(f"Created {reply.body['created']} metrics successfully"), reply)

    @legacy_route(get, "/analytics/metrics", "legacy_list_metrics", f"{ANALYTICS}/metrics")
    async def list_metrics(
        self,
        request: Request[Any, Any, State],
        metric_name: Annotated[str | None, QueryParameter(max_length=200)] = None,
        service_name: Annotated[str | None, QueryParameter(max_length=300)] = None,
        user_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> Response[LegacyMetricList]:
        """Metric values, newest first (the old service had no time window: the last year here)."""
        query = {
            "name": metric_name,
            "service": service_name,
            "user_id": user_id,
            "limit": limit,
            "from": (datetime.now(UTC) - timedelta(days=366)).isoformat(),
        }
        reply = await call_platform(request, "GET", f"{ANALYTICS}/metrics", query=query)
        raise_for_status(reply)
        metrics = [legacy_metric(metric) for metric in reply.body["metrics"]]
        return _answer(LegacyMetricList(metrics=metrics, count=len(metrics)), reply)

    @legacy_route(
        get,
        ["/analytics/usage/{user_id:str}", "/usage/{user_id:str}"],
        "legacy_usage",
        f"{ANALYTICS}/usage/{{user_id}}",
    )
    async def usage(
        self,
        request: Request[Any, Any, State],
        user_id: FromPath[str],
        period_type: Annotated[Literal["daily", "weekly", "monthly"], QueryParameter()] = "daily",
        days: Days = 30,
    ) -> Response[list[LegacyUsage]]:
        """A user's usage per period: your own, or anyone's for administrators."""
        query = {"period": PERIODS[period_type], "days": days}
        reply = await call_platform(request, "GET", f"{ANALYTICS}/usage/{quote(user_id, safe='')}", query=query)
        raise_for_status(reply)
        usage = [
            LegacyUsage(
                user_id=reply.body["user_id"],
                api_calls_count=item["api_calls"],
                tokens_used=item["tokens_used"],
                cost_usd=item["cost_usd"],
                date=item["period_start"],
                period_type=period_type,
            )
            for item in reply.body["items"]
        ]
        return _answer(usage, reply)

    @legacy_route(get, ["/analytics/costs", "/costs"], "legacy_costs", f"{ANALYTICS}/costs")
    async def costs(
        self,
        request: Request[Any, Any, State],
        user_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
        days: Days = 30,
    ) -> Response[LegacyCosts]:
        """Cost totals and the breakdown by user: your own, everyone's for administrators."""
        reply = await call_platform(request, "GET", f"{ANALYTICS}/costs", query={"user_id": user_id, "days": days})
        raise_for_status(reply)
        body, totals = reply.body, reply.body["totals"]
        costs = LegacyCosts(
            summary=LegacyCostSummary(
                total_cost_usd=totals["cost_usd"],
                total_tokens=totals["tokens_used"],
                total_api_calls=totals["api_calls"],
                period_days=days,
                cost_per_token=totals["cost_per_token"],
                cost_per_api_call=totals["cost_per_api_call"],
            ),
            user_breakdown=[
                LegacyUserCost(
                    user_id=user["user_id"],
                    total_cost=user["cost_usd"],
                    total_tokens=user["tokens_used"],
                    total_api_calls=user["api_calls"],
                )
                for user in body["by_user"]
            ],
            period=LegacyPeriod(start_date=body["start"], end_date=body["end"]),
        )
        return _answer(costs, reply)

    @legacy_route(get, "/analytics/dashboard", "legacy_dashboard", f"{ANALYTICS}/dashboard")
    async def dashboard(
        self,
        request: Request[Any, Any, State],
        hours: Annotated[int, QueryParameter(ge=1, le=2160)] = 24,
    ) -> Response[LegacyDashboard]:
        """Platform totals for the last ``hours`` (administrators only)."""
        reply = await call_platform(request, "GET", f"{ANALYTICS}/dashboard", query={"hours": hours})
        raise_for_status(reply)
        body = reply.body
        dashboard = LegacyDashboard(
            total_events=body["total_events"],
            active_users=body["active_users"],
            total_api_calls=body["api_calls"],
            total_cost=body["total_cost_usd"],
            top_endpoints=[LegacyEndpointCount(endpoint=e["route"], count=e["calls"]) for e in body["top_endpoints"]],
            recent_events=[legacy_event(event) for event in body["recent_events"]],
        )
        return _answer(dashboard, reply)
