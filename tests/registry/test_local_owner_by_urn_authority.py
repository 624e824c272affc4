"""Who the registry of a sub-authority takes for its own user, over real TLS on SQLite and a real PostgreSQL.

The registry of ``fed.sub`` trusts its parent ``fed``, whose user ``sub`` (urn:publicid:IDN+fed+user+sub) has the
HRN ``fed.sub`` too. As the certificate chains and the aggregate judge (xrn.is_authority_over_urn), he is a user of
another authority (``fed``), not a missing local user: with his own user credential he is told he needs an authority
credential of fed.sub (FORBIDDEN, 3), not "no user record fed.sub" (12); holding one, he reads as he writes, not
refused as a false holder of this authority's record fed.sub. A user of fed.sub itself still reads.
"""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.app import start_registry
from sfa_omf.trust.credential import delegate_credential
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from tests.postgres import empty_postgres
from tests.registry.conftest import _credential, trusted_fed_user
from tests.tls_harness import proxy

PARENTS_USER_SUB = "urn:publicid:IDN+fed+user+sub"  # a user of fed whose HRN, fed.sub, is the sub-authority's


@dataclass
class SubSite:
    """Registry fed.sub running, fed trusted; proxies of alice (a fed.sub user) and of fed's user sub."""

    alice: Any
    alice_cred: str
    sub: Any  # connects with the certificate fed issued him
    sub_user_cred: str  # fed's credential for its user sub himself
    fed_auth_cred: str  # fed's authority credential, owned by sub
    sub_sub_auth_cred: str  # alice's authority credential of fed.sub, delegated to sub


@pytest.fixture(params=["sqlite", "postgresql"])
def sub_site(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[SubSite]:
    report = init_directory(str(tmp_path / "fed.sub"), "fed.sub", ("alice",))
    settings = read_config(str(tmp_path / "fed.sub" / "sfa-omf.conf"))
    # The parent authority fed (its root trusted by fed.sub) and its user sub.
    fed_key, fed_chain, sub_chain = trusted_fed_user(settings, PARENTS_USER_SUB, tmp_path / "sub")

    database = Database(settings.calendar_url if request.param == "sqlite" else empty_postgres())
    database.upgrade()
    register_demo(report, database)
    authority = LocalAuthority.load(settings.data_dir, "fed.sub")
    Records(database).add(Record("fed.sub", "authority", authority.urn, "", pis=("fed.sub.alice",)))
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        alice_dir = Path(report.sfi_dirs["alice"])
        alice = proxy(url, str(alice_dir / "fed.sub.alice.user.gid"), str(alice_dir / "fed.sub.alice.pkey"))
        alice_cred = (alice_dir / "fed.sub.alice.user.cred").read_text()
        alice_auth_cred = alice.GetCredential(alice_cred, "fed.sub", "authority")
        yield SubSite(
            alice,
            alice_cred,
            proxy(url, str(tmp_path / "sub.gid"), str(tmp_path / "sub.pkey")),
            _credential(fed_key, fed_chain, sub_chain, sub_chain, ("refresh", "resolve", "info")),
            _credential(fed_key, fed_chain, sub_chain, fed_chain, ("authority", "sa", "ma")),
            delegate_credential(
                alice_auth_cred,
                sub_chain,
                load_private_key_file(str(alice_dir / "fed.sub.alice.pkey")),
                load_gid_chain_file(str(alice_dir / "fed.sub.alice.user.gid")),
            ),
        )
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
        database.dispose()


def test_the_parent_authoritys_user_named_like_the_sub_authority_is_a_user_of_another_authority(
    sub_site: SubSite,
) -> None:
    """fed's user sub with his own user credential: his HRN fed.sub read as a local user's, so the registry looked
    for a user record fed.sub and answered fault 12 "no user record fed.sub"; now FORBIDDEN (3) saying what he needs."""
    for call, args in (
        (sub_site.sub.Resolve, ("fed.sub.alice", [sub_site.sub_user_cred])),
        (sub_site.sub.List, ("fed.sub", [sub_site.sub_user_cred])),
        (sub_site.sub.GetCredential, ([sub_site.sub_user_cred], "fed.sub.demo", "slice")),
    ):
        with pytest.raises(xmlrpc.client.Fault) as raised:
            call(*args)
        fault = raised.value
        assert fault.faultCode == 3, fault.faultString
        assert "fed.sub is a user of another authority" in fault.faultString
        assert "need an authority credential of fed.sub" in fault.faultString
        assert "no user record" not in fault.faultString


def test_a_user_of_the_sub_authority_itself_still_reads_with_her_own_credential(sub_site: SubSite) -> None:
    """alice (urn:publicid:IDN+fed:sub+user+alice) is this registry's own user: the URN-authority rule keeps her so."""
    (alice,) = sub_site.alice.Resolve("fed.sub.alice", [sub_site.alice_cred])
    assert alice["hrn"] == "fed.sub.alice"
    assert "fed.sub.alice" in [record["hrn"] for record in sub_site.alice.List("fed.sub", [sub_site.alice_cred])]


def test_the_parent_authoritys_user_sub_reads_with_an_authority_credential_as_he_writes(sub_site: SubSite) -> None:
    """sub holding alice's authority credential of fed.sub (delegated to him), or fed's own: Update worked, but
    Resolve and List answered fault 22 "your TLS certificate has the name fed.sub of the authority record ... but is
    not the certificate registered for it" (his HRN taken for this authority's record). Now he reads, as a user of
    another authority holding an authority credential does."""
    for credential in (sub_site.sub_sub_auth_cred, sub_site.fed_auth_cred):
        (alice,) = sub_site.sub.Resolve("fed.sub.alice", [credential])
        assert alice["hrn"] == "fed.sub.alice"
        assert "fed.sub.alice" in [record["hrn"] for record in sub_site.sub.List("fed.sub", [credential])]
        assert sub_site.sub.Update({"hrn": "fed.sub.alice", "email": "alice@example.org"}, [credential]) == 1
