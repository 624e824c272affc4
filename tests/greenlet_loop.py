"""Code run as the server runs a booking with ``[sfa_omf] calls_in_reactor``: in a greenlet of a running asyncio
loop (a plain loop in the test's thread, as the asyncio reactor's is in the server's), optionally counting how often
the loop ran something else meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.util.concurrency import greenlet_spawn

T = TypeVar("T")


@dataclass
class Ticks:
    """How often a ticker of the loop ran while the work ran (a wait that blocked the loop leaves it at 0)."""

    count: int = 0


def in_greenlet(work: Callable[[], T], ticks: Ticks | None = None, tick_s: float = 0.01) -> T:
    """``work()`` in a greenlet of a new asyncio loop; its result or its exception. With ``ticks``, a ticker of the
    loop counts every ``tick_s`` meanwhile."""

    async def ticker(counted: Ticks) -> None:
        while True:
            await asyncio.sleep(tick_s)
            counted.count += 1

    async def main() -> T:
        counting = asyncio.ensure_future(ticker(ticks)) if ticks is not None else None
        try:
            return await greenlet_spawn(work)
        finally:
            if counting is not None:
                counting.cancel()

    return asyncio.run(main())
