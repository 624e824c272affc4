"""The registries the registry's tests call over real TLS, on SQLite and a real PostgreSQL: ``registry`` (authority tb,
alice and bob its PIs) and ``site`` (tb with a trusted peer authority fed, whose user dave calls with fed's
certificate)."""

from __future__ import annotations

import os
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import InitReport, init_directory, register_demo
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.app import start_registry
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import CredentialRequest, Privilege, delegate_credential, issue_credential
from sfa_omf.trust.gid import Gid, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file, new_private_key, private_key_pem
from tests.postgres import empty_postgres
from tests.tls_harness import proxy


@dataclass
class Registry:
    """A running registry of authority ``tb`` with alice (a PI) and bob, researchers of tb.demo, and bob a PI too."""

    url: str
    directory: Path
    database: Database
    records: Records
    alice: Any  # an XML-RPC proxy holding alice's key
    alice_cred: str
    auth_cred: str  # alice's authority credential, from GetCredential
    bob: Any
    bob_cred: str

    def fault(self, call: Any, *args: Any) -> xmlrpc.client.Fault:
        with pytest.raises(xmlrpc.client.Fault) as raised:
            call(*args)
        assert raised.value.faultString
        return raised.value

    def written(self) -> tuple[list[str], list[Record]]:
        """What a refused call must leave as it was: the GID files and every record."""
        gids = sorted(os.listdir(self.directory / "gids"))
        records = [record for kind in ("user", "slice", "node", "authority") for record in self.records.of_type(kind)]
        return gids, records


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[Registry]:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    database = Database(settings.calendar_url if request.param == "sqlite" else empty_postgres())
    database.upgrade()
    register_demo(report, database)
    Inventory(database).add_node(NodeSpec("urn:publicid:IDN+tb+node+node1", "node1"))
    with served_registry(running_reactor, report, settings, database) as served:
        yield served


@contextmanager
def served_registry(
    running_reactor: Any, report: InitReport, settings: Settings, database: Database
) -> Iterator[Registry]:
    """The registry ``serve`` starts for the site ``init`` made (``report``), on ``database`` (upgraded, the demo
    registered): alice and bob PIs of tb, as user add --pi makes them. Stopped, and the database disposed, after."""
    records = Records(database)
    authority = LocalAuthority.load(settings.data_dir, "tb")
    records.add(Record("tb", "authority", authority.urn, "", pis=("tb.alice", "tb.bob")))  # as user add --pi does
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        alice_dir, bob_dir = Path(report.sfi_dirs["alice"]), Path(report.sfi_dirs["bob"])
        alice = proxy(url, str(alice_dir / "tb.alice.user.gid"), str(alice_dir / "tb.alice.pkey"))
        alice_cred = (alice_dir / "tb.alice.user.cred").read_text()
        yield Registry(
            url,
            Path(report.directory),
            database,
            records,
            alice,
            alice_cred,
            alice.GetCredential(alice_cred, "tb", "authority"),
            proxy(url, str(bob_dir / "tb.bob.user.gid"), str(bob_dir / "tb.bob.pkey")),
            (bob_dir / "tb.bob.user.cred").read_text(),
        )
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
        database.dispose()


FED_AUTHORITY = "urn:publicid:IDN+fed+authority+sa"
DAVE = "urn:publicid:IDN+fed+user+dave"


@dataclass
class Site:
    """Registry tb running, with fed trusted; proxies and credentials of alice (a tb PI) and dave (a fed user)."""

    url: str
    directory: Path
    records: Records
    alice: Any
    alice_cred: str
    alice_auth_cred: str  # from GetCredential: tb's authority credential, delegatable
    dave: Any  # connects with the certificate fed issued him
    dave_user_cred: str  # fed's credential for dave himself
    fed_auth_cred: str  # fed's authority credential, owned by dave
    dave_tb_auth_cred: str  # alice's authority credential of tb, delegated to dave

    def fault(self, call: Any, *args: Any) -> xmlrpc.client.Fault:
        with pytest.raises(xmlrpc.client.Fault) as raised:
            call(*args)
        return raised.value

    def written(self) -> tuple[list[str], list[Record]]:
        """What a refused call must leave as it was: the GID files and every record."""
        gids = sorted(os.listdir(self.directory / "gids"))
        records = [record for kind in ("user", "slice", "node", "authority") for record in self.records.of_type(kind)]
        return gids, records


def _credential(
    issuer_key: rsa.RSAPrivateKey,
    issuer_chain: tuple[Gid, ...],
    owner: tuple[Gid, ...],
    target: tuple[Gid, ...],
    privileges: tuple[str, ...],
) -> str:
    """A credential fed issues (as a peer's registry would)."""
    request = CredentialRequest(
        owner_chain=owner,
        target_chain=target,
        expires=utcnow() + timedelta(days=1),
        privileges=tuple(Privilege(name, True) for name in privileges),
    )
    return issue_credential(request, issuer_key, issuer_chain)


def trusted_fed_user(
    settings: Settings, user_urn: str, files: Path
) -> tuple[rsa.RSAPrivateKey, tuple[Gid, ...], tuple[Gid, ...]]:
    """The peer authority fed, its root trusted by the registry of ``settings`` (as an operator drops a peer's root
    into trusted_roots), and its user ``user_urn``, whose chain and key are written to ``files``.gid and .pkey: fed's
    key, fed's chain and the user's chain."""
    fed_key = new_private_key()
    fed_chain = (create_gid(FED_AUTHORITY, fed_key.public_key(), fed_key),)
    user_key = new_private_key()
    user_chain = (create_gid(user_urn, user_key.public_key(), fed_key, issuer=fed_chain[0]), *fed_chain)
    Path(settings.trusted_roots_dir, "fed.gid").write_text(chain_pem(fed_chain))
    files.with_suffix(".gid").write_text(chain_pem(user_chain))
    files.with_suffix(".pkey").write_bytes(private_key_pem(user_key))
    return fed_key, fed_chain, user_chain


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[Site]:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    fed_key, fed_chain, dave_chain = trusted_fed_user(settings, DAVE, tmp_path / "dave")

    database = Database(settings.calendar_url if request.param == "sqlite" else empty_postgres())
    database.upgrade()
    register_demo(report, database)
    records = Records(database)
    authority = LocalAuthority.load(settings.data_dir, "tb")
    records.add(Record("tb", "authority", authority.urn, "", pis=("tb.alice",)))  # as user add --pi does
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        alice_dir = Path(report.sfi_dirs["alice"])
        alice = proxy(url, str(alice_dir / "tb.alice.user.gid"), str(alice_dir / "tb.alice.pkey"))
        alice_cred = (alice_dir / "tb.alice.user.cred").read_text()
        alice_auth_cred = alice.GetCredential(alice_cred, "tb", "authority")
        dave_tb_auth_cred = delegate_credential(
            alice_auth_cred,
            dave_chain,
            load_private_key_file(str(alice_dir / "tb.alice.pkey")),
            load_gid_chain_file(str(alice_dir / "tb.alice.user.gid")),
        )
        yield Site(
            url,
            tmp_path / "tb",
            records,
            alice,
            alice_cred,
            alice_auth_cred,
            proxy(url, str(tmp_path / "dave.gid"), str(tmp_path / "dave.pkey")),
            _credential(fed_key, fed_chain, dave_chain, dave_chain, ("refresh", "resolve", "info")),
            _credential(fed_key, fed_chain, dave_chain, fed_chain, ("authority", "sa", "ma")),
            dave_tb_auth_cred,
        )
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
        database.dispose()
