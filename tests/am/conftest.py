"""What the aggregate's tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.times import utcnow
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.calendar.conftest import fresh_database
from tests.conftest import DemoPki


@contextmanager
def aggregate_on(backend: str, tmp_path: Path, pki: DemoPki, *nodes: NodeSpec) -> Iterator[Aggregate]:
    """An aggregate of the demo authority on a fresh calendar (``backend``: sqlite or postgresql) holding ``nodes``,
    with a verdict cache as ``sfa-omf serve`` makes it; its database disposed of after."""
    database = fresh_database(backend, tmp_path)
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots, VerdictCache())
    )
    for node in nodes:
        made.inventory.add_node(node)
    try:
        yield made
    finally:
        database.dispose()


class Clock:
    """An aggregate's clock: now, or later (``ahead``), to let an allocation lapse."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.ahead


@pytest.fixture
def clock() -> Clock:
    return Clock()
