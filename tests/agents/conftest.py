"""An aggregate served over real TLS on 127.0.0.1 from an init directory, with the agent API, for agent tests.

The calendar is SQLite, or the real PostgreSQL when SFA_OMF_TEST_POSTGRES_URL is set (CI sets it)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import RunningServer, build_aggregate, start_aggregate

POSTGRES_URL = os.environ.get("SFA_OMF_TEST_POSTGRES_URL")


@dataclass
class Lab:
    """An authority directory 'lab' with user ann, its aggregate, and the server (restartable on its port)."""

    directory: Path
    settings: Settings
    aggregate: Aggregate
    server: RunningServer
    reactor: Any
    sfi: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port_number}/"

    @property
    def settings_path(self) -> str:
        return str(self.directory / "sfa-omf.conf")

    @property
    def root(self) -> str:
        return str(self.directory / "authority" / "lab.gid")

    @property
    def agents(self) -> Agents:
        return Agents(self.aggregate.database, self.aggregate.policy)

    def invite(self, pool: str = "default", lifetime_s: int = 3600) -> str:
        return self.agents.create_token(pool, lifetime_s)[0]

    def restart(self) -> None:
        """Stop serving and serve again on the same port, with a newly built aggregate (a server restart)."""
        port = self.server.port_number
        blockingCallFromThread(self.reactor, self.server.stop)
        self.aggregate.database.dispose()
        self.aggregate = build_aggregate(self.settings)
        self.server = blockingCallFromThread(self.reactor, start_aggregate, self.settings, self.aggregate, port)


def _database_url(tmp_path: Path, kind: str) -> str:
    if kind == "sqlite":
        return ""
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("SFA_OMF_TEST_POSTGRES_URL is not set: scripts/test.sh starts PostgreSQL and sets it")
        pytest.skip("PostgreSQL not configured: run scripts/test.sh, or set SFA_OMF_TEST_POSTGRES_URL")
    database = Database(POSTGRES_URL)
    with database.engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    database.dispose()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def lab(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[Lab]:
    url = _database_url(tmp_path, request.param)
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = read_config(str(tmp_path / "lab" / "sfa-omf.conf"))
    if url:
        settings = dataclasses.replace(settings, database_url=url)
    aggregate = build_aggregate(settings)
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    made = Lab(tmp_path / "lab", settings, aggregate, server, running_reactor, Path(report.sfi_dirs["ann"]))
    yield made
    blockingCallFromThread(running_reactor, made.server.stop)
    made.aggregate.database.dispose()
