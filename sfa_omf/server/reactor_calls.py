"""Allocate, Delete and Status answered in the reactor thread ([sfa_omf] calls_in_reactor; PostgreSQL only).

Why: with many clients, much of such a call's cost on the call threads is handing the interpreter lock over, at every
wait for the database and between the reactor and a call thread (docs/benchmarks.md, the thirty-fifth to
thirty-eighth sessions). Here each such call runs in a greenlet of the reactor thread (SQLAlchemy's ``greenlet_spawn``
on Twisted's asyncio reactor), and its statements wait through asynchronous connections (calendar/database.py), so
the one thread serves the others meanwhile. What would block it runs in a thread instead (waits.py: the testbed's
requests, local accounts' files, cold credential checks, back-off sleeps).

Bounds: a body over REACTOR_MAX_BODY_BYTES, a method not in REACTOR_METHODS, and any call beyond ``limit`` running at
once go to the call threads as before. Every wait for the database is bounded as on the threads (the answer bound of
``Database``); the stop waits for these calls as for the threads' (``wait_until_idle``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

log = logging.getLogger("sfa_omf.server")

#: The calls answered in the reactor thread: the bookings, whose work is a few statements, and Status, mostly answered
#: from memory (calendar/kept_reads.py). The others stay on the call threads: Renew and Provision ask the testbed
#: directly, and Describe and ListResources build documents that may be large.
REACTOR_METHODS = frozenset({"Allocate", "Delete", "Status"})
#: What ``serve``'s line "serving AM API v3" adds when these calls are answered in the reactor thread.
IN_REACTOR_WORDS = "Allocate, Delete and Status answered in the reactor thread (calls_in_reactor)"
#: Larger bodies (a request RSpec of many nodes) are parsed and answered on the call threads: parsing them would
#: hold the reactor thread.
REACTOR_MAX_BODY_BYTES = 64 * 1024


def install_asyncio_reactor() -> bool:
    """Make Twisted's reactor the asyncio one (call before anything imports ``twisted.internet.reactor``); False,
    logged, when another reactor is installed already (the calls then stay on the call threads)."""
    if "twisted.internet.reactor" in sys.modules:
        if not asyncio_reactor_running_here():
            log.warning("calls_in_reactor: another Twisted reactor is installed; calls stay on the call threads")
            return False
        return True
    from twisted.internet import asyncioreactor

    asyncioreactor.install(asyncio.new_event_loop())
    return True


def asyncio_reactor_running_here() -> bool:
    """Whether the installed Twisted reactor is the asyncio one."""
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)


class ReactorCalls:
    """The calls running in greenlets of the reactor thread: at most ``limit`` at once. Use in the reactor thread
    (``wait_until_idle`` in any other)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = max(1, limit)
        self._loop = loop
        self.running = 0
        self._idle = threading.Event()
        self._idle.set()

    def start(
        self, work: Callable[..., str], args: tuple[Any, ...], answered: Callable[[str], object]
    ) -> Deferred[object] | None:
        """Run ``work(*args)`` in a greenlet of the reactor thread and hand its answer to ``answered``; None, having
        started nothing, when ``limit`` calls run already (the caller sends this one to the call threads)."""
        from sqlalchemy.util.concurrency import greenlet_spawn

        if self.running >= self.limit:
            return None
        self.running += 1
        self._idle.clear()
        future = asyncio.ensure_future(greenlet_spawn(work, *args), loop=self._loop)
        deferred: Deferred[str] = Deferred.fromFuture(future)
        ended = deferred.addCallback(answered)
        ended.addBoth(self._ended)  # (after the answer is written: a stop waiting for this call sees it answered)
        return ended

    def _ended(self, result: object) -> object:
        self.running -= 1
        if not self.running:
            self._idle.set()
        return result

    def wait_until_idle(self) -> None:
        """Return once no call runs here (a stop's, in a thread of its own: stop_serving)."""
        self._idle.wait()
