"""Timeouts for many short waits on one timer.

Every proxied request waits twice with a timeout (its Redis call, its upstream's answer). A timer
each (``loop.call_later`` then ``cancel``) is a heap push and a cancelled handle per wait; here a
wait costs a dict insert and delete, and one timer, running only while something waits, checks every
``timeout / 4``: a wait that overstays is expired at most a quarter of its timeout late.
"""

import asyncio
from collections.abc import Callable, Hashable


class Deadlines:
    def __init__(self, timeout: float, expire: Callable[[Hashable], None]) -> None:
        self.timeout = timeout
        self.tick = timeout / 4
        self.expire = expire
        self.pending: dict[Hashable, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        self.pending[key] = loop.time() + self.timeout
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._check, loop)

    def discard(self, key: Hashable) -> None:
        self.pending.pop(key, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        expired = [key for key, deadline in self.pending.items() if deadline <= now]
        for key in expired:
            del self.pending[key]
            self.expire(key)
        self._timer = loop.call_later(self.tick, self._check, loop) if self.pending else None
