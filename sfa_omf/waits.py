"""Waiting inside a call answered in the reactor thread ([sfa_omf] calls_in_reactor, server/reactor_calls.py).

Such a call runs in a greenlet of the reactor thread, and its database statements wait without blocking that thread
(calendar/database.py switches to asynchronous connections there). Anything else that would block (a testbed's
HTTP request, files of local accounts, a cold credential check's CPU, a back-off sleep) must not hold the reactor:
``blocking`` runs it in a thread and waits for it as the statements wait, ``pause`` sleeps without holding the
thread. Outside such a call (a call thread, a command, a background task) both do what they say directly.

A ``threading.Lock`` must never be held across ``blocking``, ``pause`` or a statement in code such calls run: another
greenlet of the same thread taking it would block the reactor for ever.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_reactor_call() -> bool:
    """Whether the code runs in a call answered in the reactor thread (a greenlet of SQLAlchemy's, whose waits yield
    to the reactor). SQLAlchemy is not imported for the question: a process that has not imported it (a light
    command, ``credential verify``) runs no such greenlet."""
    concurrency = sys.modules.get("sqlalchemy.util.concurrency")
    return concurrency is not None and bool(concurrency.in_greenlet())


def blocking(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``: in a reactor call, run in a thread of the event loop's executor and waited for without
    blocking the reactor (its exception raised here); elsewhere, called directly."""
    if not in_reactor_call():
        return work(*args)
    from sqlalchemy.util.concurrency import await_

    result: T = await_(asyncio.get_running_loop().run_in_executor(None, work, *args))
    return result


def pause(seconds: float) -> None:
    """Sleep ``seconds``: in a reactor call, without holding the reactor thread."""
    if in_reactor_call():
        from sqlalchemy.util.concurrency import await_

        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)
