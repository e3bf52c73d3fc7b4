"""One timer for many waits (gateway/deadlines.py): overdue waits expire, finished ones never do,
and the timer stops when nothing waits."""

import asyncio
from collections.abc import Hashable

from gateway.deadlines import Deadlines


async def test_overdue_waits_expire_and_finished_ones_do_not() -> None:
    expired: list[Hashable] = []
    deadlines = Deadlines(0.2, expired.append)
    deadlines.add("slow")
    deadlines.add("fast")
    deadlines.discard("fast")  # finished before any check
    for _ in range(100):  # generous: expiry is due at 0.2-0.25 s
        if expired:
            break
        await asyncio.sleep(0.05)
    assert expired == ["slow"]
    await asyncio.sleep(0.3)
    assert expired == ["slow"] and deadlines.pending == {}
    assert deadlines._timer is None, "the timer should stop once nothing waits"
