"""A real aggregate from an init directory, served over TLS on 127.0.0.1 (the web calendar included), and HTTPS GETs
with or without a user's certificate, as a browser or a calendar client makes them."""

from __future__ import annotations

import dataclasses
import http.client
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from tests.tls_harness import client_context

ADMIN = "urn:publicid:IDN+lab+user+ben"


@dataclass
class Served:
    url: str  # https://127.0.0.1:PORT/
    aggregate: Aggregate
    sfi: dict[str, Path]
    config: str  # the init directory's sfa-omf.conf (its port is not the one served here)

    def files(self, user: str) -> tuple[str, str]:
        """(GID chain, private key) of a demo user, as sfi.py keeps them."""
        return str(self.sfi[user] / f"lab.{user}.user.gid"), str(self.sfi[user] / f"lab.{user}.pkey")

    def slice_cred(self, user: str) -> str:
        return (self.sfi[user] / f"lab.{user}-lab.demo.slice.cred").read_text()

    def get(self, path: str, user: str | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of an HTTPS GET, presenting the user's certificate if one is named."""
        return self.send("GET", path, user)

    def send(
        self,
        method: str,
        path: str,
        user: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of an HTTPS request, presenting the user's certificate if one is named."""
        chain, key = self.files(user) if user else (None, None)
        host, port = self.url.removeprefix("https://").rstrip("/").split(":")
        connection = http.client.HTTPSConnection(host, int(port), context=client_context(chain, key), timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheader("content-type", ""), response.read()
        finally:
            connection.close()


@contextmanager
def serving(running_reactor: Any, tmp_path: Path, database_url: str = "") -> Iterator[Served]:
    """The lab (users ann, ben, cid) served by ``sfa-omf serve``'s code; ``database_url``: its calendar instead of
    the SQLite file init makes, written into the configuration file so that the CLI works on what is served."""
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann", "ben", "cid"))
    config = tmp_path / "lab" / "sfa-omf.conf"
    if database_url:
        config.write_text(re.sub(r"(?m)^database_url = .*$", f"database_url = {database_url}", config.read_text()))
    settings = dataclasses.replace(read_config(str(config)), web_admins=ADMIN)
    aggregate = build_aggregate(settings)
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        yield Served(
            f"https://127.0.0.1:{server.port_number}/",
            aggregate,
            {name: Path(path) for name, path in report.sfi_dirs.items()},
            str(config),
        )
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        aggregate.database.dispose()


@pytest.fixture
def served(running_reactor: Any, tmp_path: Path) -> Iterator[Served]:
    with serving(running_reactor, tmp_path) as lab:
        yield lab
