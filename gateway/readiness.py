"""The gateway's readiness checks for its upstreams: each upstream's real state, breaker included.

An upstream is ``ok`` when its ``/ready`` answers 200; ``degraded`` when it answers anything else
(it is there: its routes pass on its answers) or cannot be reached (its routes answer 502/503);
the gateway stays ready while any upstream can be reached and answers 503 when none can. One
``/ready`` asks every upstream once, in parallel, whichever check asks first. An answer from an
upstream whose breaker is open is a transport success like any other: it closes the breaker.
"""

import asyncio
from collections.abc import Iterable

import msgspec

from gateway.proxy import READY_SECONDS, Forward, HTTPUpstream, NotReady
from shared.http import Degraded, ReadinessCheck


class NoUpstreamReachable(Exception):
    """Every upstream is unreachable: the gateway could answer nothing but 502/503."""


class UpstreamState(msgspec.Struct, frozen=True):
    reachable: bool
    problem: str | None = None  # None: ready


class UpstreamReadiness:
    def __init__(self, upstreams: Iterable[Forward]) -> None:
        self.upstreams = list(upstreams)
        self._round: asyncio.Future[dict[str, UpstreamState]] | None = None

    def check(self, upstream: Forward) -> ReadinessCheck:
        async def check() -> None:
            states = await self._states()
            state = states[upstream.name]
            if state.problem is None:
                return
            if not any(other.reachable for other in states.values()):
                raise NoUpstreamReachable(state.problem)
            raise Degraded(state.problem)

        return check

    async def _states(self) -> dict[str, UpstreamState]:
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._ask_every_upstream())
        # Shielded: one check cancelled by the kernel's deadline must not cancel the others' round.
        return await asyncio.shield(self._round)

    async def _ask_every_upstream(self) -> dict[str, UpstreamState]:
        states = await asyncio.gather(*(_state(upstream) for upstream in self.upstreams))
        return {upstream.name: state for upstream, state in zip(self.upstreams, states, strict=True)}


async def _state(upstream: Forward) -> UpstreamState:
    breaker = upstream.breaker
    try:
        async with asyncio.timeout(READY_SECONDS):  # within the kernel's deadline for the whole check
            await upstream.ready()
    except NotReady as exc:
        breaker.record_success()
        return UpstreamState(True, f"not ready ({exc}): its routes pass on its answers")
    except Exception as exc:
        if not isinstance(upstream, HTTPUpstream):  # a service in this process is always there
            return UpstreamState(True, f"not ready ({type(exc).__name__}): its routes pass on its answers")
        problem = f"unreachable ({type(exc).__name__}), breaker {breaker.state}: its routes answer 502/503"
        return UpstreamState(False, problem)
    breaker.record_success()
    return UpstreamState(True)
