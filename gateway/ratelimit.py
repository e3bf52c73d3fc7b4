"""Per-client rate limiting with GCRA, shared by every gateway replica through Redis.

One Lua script per request does the limit *and* the access token's revocation check, so a
protected request costs one Redis round trip. Redis slow (timeout 50 ms) or down: a breaker stops
calling it and a per-process limiter takes over with the same policy (never unlimited), until a
probe finds Redis back.

Policy semantics: a client may send ``burst`` requests at once and at most ``limit`` in any
window of ``window`` seconds (the steady rate is therefore ``limit - burst + 1`` per window).
"""

import functools
import logging
import math
import time
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.transport.breaker import CircuitBreaker
from gateway.transport.redis_script import PipelinedScript

logger = logging.getLogger("gateway.ratelimit")

DECISIONS = Counter("pyairtable_gateway_ratelimit_decisions_total", "Rate-limit decisions", ["policy", "decision"])
DEGRADED = Gauge(
    "pyairtable_gateway_ratelimit_degraded",
    "1 while the shared (Redis) limiter is unavailable",
    multiprocess_mode="livemax",  # several workers: 1 while any of them is without Redis
)
REDIS_FAILURES = Counter(
    "pyairtable_gateway_ratelimit_redis_failures_total",
    "Rate-limit calls to Redis that failed or timed out (each one a request that waited on Redis)",
)
LOCAL_DECISIONS = Counter(
    "pyairtable_gateway_ratelimit_local_decisions_total",
    "Requests limited by this process alone (no Redis configured, or Redis unavailable)",
)

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local revoked = 0
if #KEYS == 4 then
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
    revoked = 1
  else
    local cutoff = redis.call('GET', KEYS[4])
    if cutoff and tonumber(ARGV[3]) <= tonumber(cutoff) then revoked = 1 end
  end
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - tolerance > now then
  return {0, 0, tat - now, tat - tolerance - now, revoked}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, math.floor((now + tolerance - new_tat) / interval + 1e-6) + 1, new_tat - now, 0, revoked}
"""


COMMANDS_KEPT = 10_000  # packed script calls kept, one per client (and token); all dropped when full


class Policy(msgspec.Struct, frozen=True):
    name: str
    limit: int
    window: int
    burst: int

    @property
    def interval_ms(self) -> float:
        return self.window * 1000 / max(1, self.limit - self.burst + 1)

    @property
    def tolerance_ms(self) -> float:
        return (self.burst - 1) * self.interval_ms

    @property
    def policy_header(self) -> str:
        return f'"{self.name}";q={self.limit};w={self.window}'


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    remaining: int
    reset_seconds: int
    retry_after: int
    revoked: bool = False
    revocation_checked: bool = False

    def headers(self, policy: Policy) -> dict[str, str]:
        headers = {
            "RateLimit-Policy": policy.policy_header,
            "RateLimit": f'"{policy.name}";r={self.remaining};t={self.reset_seconds}',
            "X-RateLimit-Limit": str(policy.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(self.retry_after, self.reset_seconds if self.remaining == 0 else 0, 1))
        return headers

    def raw_headers(self, policy: Policy) -> list[tuple[bytes, bytes]]:
        """``headers`` of an allowed request, as ASGI response headers."""
        policy_header, name, limit = _policy_bytes(policy)
        remaining, reset = b"%d" % self.remaining, b"%d" % self.reset_seconds
        return [
            (b"ratelimit-policy", policy_header),
            (b"ratelimit", b'"%b";r=%b;t=%b' % (name, remaining, reset)),
            (b"x-ratelimit-limit", limit),
            (b"x-ratelimit-remaining", remaining),
            (b"x-ratelimit-reset", reset),
        ]


@functools.cache
def _policy_bytes(policy: Policy) -> tuple[bytes, bytes, bytes]:
    """A policy's header, name and limit as header bytes, worked out once per policy."""
    return policy.policy_header.encode(), policy.name.encode(), b"%d" % policy.limit


def _decision(
    allowed: int, remaining: float, reset_ms: float, retry_ms: float, revoked: int, revocation_checked: bool = False
) -> Decision:
    return Decision(
        allowed=bool(allowed),
        remaining=max(0, int(remaining)),
        reset_seconds=max(0, math.ceil(reset_ms / 1000)),
        retry_after=max(1, math.ceil(retry_ms / 1000)) if not allowed else 0,
        revoked=bool(revoked),
        revocation_checked=revocation_checked,
    )


class LocalLimiter:
    """The same GCRA in process memory: the fallback, and the limiter of the embedded mode."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.tats: dict[str, float] = {}
        self.max_keys = max_keys

    def hit(self, key: str, policy: Policy) -> Decision:
        now = time.time() * 1000
        tat = max(self.tats.get(key, now), now)
        if tat - policy.tolerance_ms > now:
            return _decision(0, 0, tat - now, tat - policy.tolerance_ms - now, 0)
        new_tat = tat + policy.interval_ms
        if len(self.tats) >= self.max_keys:
            self._forget_idle(now)
        self.tats[key] = new_tat
        # The small epsilon keeps float rounding from costing a whole request of the remaining count.
        remaining = math.floor((now + policy.tolerance_ms - new_tat) / policy.interval_ms + 1e-6) + 1
        return _decision(1, remaining, new_tat - now, 0, 0)

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, tat in self.tats.items() if tat <= now]:
            del self.tats[key]


class RateLimiter:
    def __init__(self, redis: Redis | None, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace
        self.local = LocalLimiter()
        self.breaker = CircuitBreaker(failures=5, reset_seconds=5.0)
        self._script: Any = None
        self._degraded_reported = True  # so the first answer from Redis sets the gauge to 0
        self._decision_counters: dict[tuple[str, bool], Any] = {}
        self._policy_arguments: dict[Policy, tuple[str, bytes, bytes]] = {}
        self._commands: dict[tuple[Policy, str, tuple[str, ...], int], bytes] = {}
        if redis is not None:
            # The per-request call over one pipelined connection (a quarter of redis-py's CPU cost);
            # redis-py's script object where that path does not apply (TLS, Unix socket).
            self._script = PipelinedScript.for_client(redis, _SCRIPT) or redis.register_script(_SCRIPT)

    async def aclose(self) -> None:
        if isinstance(self._script, PipelinedScript):
            await self._script.aclose()

    @property
    def degraded(self) -> bool:
        return self.redis is not None and self.breaker.state != "closed"

    async def hit(self, key: str, policy: Policy, revocation_keys: list[str] | None = None, iat: int = 0) -> Decision:
        """Count one request against ``key``; with revocation keys, also say whether the token is revoked.

        ``revoked`` is only known while Redis answers; the caller checks its own store otherwise.
        """
        if self._script is not None and self.breaker.allow():
            try:
                kept_as = (policy, key, tuple(revocation_keys) if revocation_keys else (), iat)
                command = self._commands.get(kept_as)
                if command is not None:  # the common case, awaited here: one coroutine fewer to resume
                    result = await self._script.call_packed(command)
                else:
                    result = await self._call_script(kept_as, key, policy, revocation_keys, iat)
            except (RedisError, OSError) as exc:
                self._record_failure(exc)
            except BaseException:
                self.breaker.release_probe()  # cancelled mid-call: no verdict on Redis, the next call probes
                raise
            else:
                self.breaker.record_success()
                if self._degraded_reported:
                    self._degraded_reported = False
                    DEGRADED.set(0)
                allowed, remaining, reset_ms, retry_ms, revoked = result
                decision = _decision(allowed, remaining, reset_ms, retry_ms, revoked, bool(revocation_keys))
                self._count(policy, decision)
                return decision
        decision = self.local.hit(f"{policy.name}:{key}", policy)  # one budget per policy, as in Redis
        self._count(policy, decision)
        LOCAL_DECISIONS.inc()
        return decision

    async def _call_script(
        self,
        kept_as: tuple[Policy, str, tuple[str, ...], int],
        key: str,
        policy: Policy,
        revocation_keys: list[str] | None,
        iat: int,
    ) -> Any:
        """The script's reply. The same client and token make the same command every time: over the
        pipelined connection it is packed once and kept in ``_commands`` (up to ``COMMANDS_KEPT``)."""
        prefix, interval, tolerance = self._script_arguments(policy)
        keys = [prefix + key]
        if revocation_keys:
            keys += [f"{self.namespace}:{k}" for k in revocation_keys]
        args = [interval, tolerance, iat]
        if not isinstance(self._script, PipelinedScript):
            return await self._script(keys=keys, args=args)
        if len(self._commands) >= COMMANDS_KEPT:
            self._commands.clear()
        command = self._commands[kept_as] = self._script.pack(keys, args)
        return await self._script.call_packed(command)

    def _script_arguments(self, policy: Policy) -> tuple[str, bytes, bytes]:
        """The policy's key prefix and its two numbers as Redis gets them (repr, as redis-py
        encodes floats), worked out once per policy rather than on every request."""
        arguments = self._policy_arguments.get(policy)
        if arguments is None:
            arguments = self._policy_arguments[policy] = (
                f"{self.namespace}:rl:{policy.name}:",
                repr(policy.interval_ms).encode(),
                repr(policy.tolerance_ms).encode(),
            )
        return arguments

    def _count(self, policy: Policy, decision: Decision) -> None:
        """``DECISIONS.labels(...).inc()`` with the child looked up once (``labels()`` locks)."""
        key = (policy.name, decision.allowed)
        child = self._decision_counters.get(key)
        if child is None:
            child = self._decision_counters[key] = DECISIONS.labels(
                policy.name, "allow" if decision.allowed else "deny"
            )
        child.inc()

    def _record_failure(self, exc: BaseException) -> None:
        REDIS_FAILURES.inc()
        was_closed = self.breaker.state == "closed"
        self.breaker.record_failure()
        self._degraded_reported = True
        DEGRADED.set(1)
        if was_closed:
            logger.warning("rate limiter falling back to per-process limits", extra={"error": type(exc).__name__})
