"""What the aggregate's tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
from sfa_omf.times import utcnow
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.calendar.conftest import fresh_database
from tests.conftest import DemoPki
from tests.tls_harness import Listener, reactor


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


def listen_v2_and_v3(listener: Listener, aggregate: Aggregate, pki: DemoPki, threads: int) -> str:
    """Serve ``aggregate`` over TLS with the demo aggregate's identity, AM API v3 at / and v2 at /am2, as ``serve``
    does: the base URL (https://127.0.0.1:PORT)."""
    pool = listener.pool(threads)
    limit = 4 * 1024 * 1024
    site = make_site(
        {b"am2": XmlRpcResource(ApiV2(aggregate), pool, reactor, limit)},
        XmlRpcResource(ApiV3(aggregate), pool, reactor, limit),
        limit,
        60,
    )
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    return f"https://127.0.0.1:{listener.listen(site, tls)}"
