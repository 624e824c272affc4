"""An aggregate served over real TLS on 127.0.0.1 from an init directory, with the agent API, for agent tests.

The calendar is SQLite, or the real PostgreSQL when SFA_OMF_TEST_POSTGRES_URL is set (CI sets it)."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.agents import Agents
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import RunningServer, build_aggregate, start_aggregate
from sfa_omf.testbed.unix_accounts import LOCK_DIR
from tests.postgres import empty_postgres
from tests.requirements import missing
from tests.testbed.oar.conftest import oar_client, oar_jobs, oar_start, oar_url, oar_users  # noqa: F401 (test_oar_nodes)

SERVER_ADDRESS, AGENT_ADDRESS = "10.218.0.1", "10.218.0.2"


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

    def invite(self, pool: str = "default", lifetime_s: int = 3600, hostname: str = "") -> str:
        """A join token; bound to ``hostname`` when given (only such a token re-binds an enrolled node)."""
        return self.agents.create_token(pool, lifetime_s, hostname)[0]

    def restart(self) -> None:
        """Stop serving and serve again on the same port, with a newly built aggregate (a server restart)."""
        port = self.server.port_number
        blockingCallFromThread(self.reactor, self.server.stop)
        self.aggregate.database.dispose()
        self.aggregate = build_aggregate(self.settings)
        self.server = blockingCallFromThread(self.reactor, start_aggregate, self.settings, self.aggregate, port)


def _database_url(tmp_path: Path, kind: str) -> str:
    return "" if kind == "sqlite" else empty_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def lab(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[Lab]:
    url = _database_url(tmp_path, request.param)
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = tmp_path / "lab" / "sfa-omf.conf"
    if url:  # the file itself names PostgreSQL, so the commands run by the tests use it too
        lines = config.read_text().splitlines()
        config.write_text(
            "".join(f"database_url = {url}\n" if line.startswith("database_url =") else f"{line}\n" for line in lines)
        )
    settings = read_config(str(config))
    assert settings.calendar_url == (url or settings.calendar_url)
    aggregate = build_aggregate(settings)
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    made = Lab(tmp_path / "lab", settings, aggregate, server, running_reactor, Path(report.sfi_dirs["ann"]))
    yield made
    blockingCallFromThread(running_reactor, made.server.stop)
    made.aggregate.database.dispose()


def userdel(login: str) -> None:
    """Remove a test's real account with its home, and its lock file (testbed/unix_accounts.py's LOCK_DIR)."""
    subprocess.run(["userdel", "--remove", login], capture_output=True, check=False)
    (LOCK_DIR / f"{login}.lock").unlink(missing_ok=True)


@pytest.fixture
def login() -> Iterator[str]:
    """A login name of the test's own (``sfahk...``) for a real account (useradd; the tests run as root); the account
    is removed at the end (its processes by the test itself)."""
    name = f"sfahk{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        userdel(name)


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Two namespaces joined by a veth pair: (server namespace, agent namespace, the agent side's link name)."""
    if not os.environ.get("SFA_OMF_TEST_NETNS"):
        missing(
            "SFA_OMF_TEST_NETNS is not set: scripts/test.sh checks for root and ip netns and sets it",
            "network namespaces not enabled: run as root with SFA_OMF_TEST_NETNS=1 (scripts/test.sh does)",
        )
    tag = secrets.token_hex(3)
    server, agent = f"sfa18s{tag}", f"sfa18a{tag}"
    server_link, agent_link = f"s18{tag}", f"a18{tag}"
    run("ip", "netns", "add", server)
    try:
        run("ip", "netns", "add", agent)
        run("ip", "link", "add", server_link, "type", "veth", "peer", "name", agent_link)
        run("ip", "link", "set", server_link, "netns", server)
        run("ip", "link", "set", agent_link, "netns", agent)
        for namespace, link, address in ((server, server_link, SERVER_ADDRESS), (agent, agent_link, AGENT_ADDRESS)):
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            run("ip", "-n", namespace, "address", "add", f"{address}/24", "dev", link)
            run("ip", "-n", namespace, "link", "set", link, "up")
        yield server, agent, agent_link
    finally:
        for namespace in (agent, server):  # deleting a namespace deletes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
