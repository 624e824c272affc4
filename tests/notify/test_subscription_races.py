"""Changes of one user's channels asked at the same moment (a double click on /calendar/me, or the page and
``sfa-omf notify`` at once), on both databases: each request is answered, none with an internal error, and the user
ends with one row per channel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sfa_omf.calendar.outbox import Outbox
from tests.calendar.conftest import fresh_database
from tests.notify.conftest import ALICE


def at_once(work: Callable[[int], object], count: int = 8) -> list[object]:
    """``work(i)`` in ``count`` threads released together (a barrier), its answers in order."""
    start = threading.Barrier(count)

    def run(index: int) -> object:
        start.wait()
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_racing_subscribes_and_unsubscribes_of_one_user_all_succeed(kind: str, tmp_path: Path) -> None:
    """On PostgreSQL the later insert met the earlier one's row (one per user and channel) and failed with a raw
    IntegrityError."""
    database = fresh_database(kind, tmp_path)
    outbox = Outbox(database)
    try:
        for _ in range(3):  # a few rounds: the race is the scheduler's
            at_once(lambda i: outbox.subscribe(ALICE, "email", f"alice{i}@example.org"))
            (chosen,) = outbox.subscriptions([ALICE])[ALICE]
            assert chosen[0] == "email" and chosen[1].startswith("alice")
            removed = at_once(lambda _: outbox.unsubscribe(ALICE, "email"))
            assert removed.count(True) == 1  # one request removed the address, the others found it gone
            assert outbox.subscriptions([ALICE]) == {}
    finally:
        database.dispose()
