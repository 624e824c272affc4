"""Who may call the registry's reads, and with which credential, over real TLS on SQLite and a real PostgreSQL.

Authority ``tb`` (alice a PI, bob; both researchers of tb.demo) trusts a second authority ``fed`` whose user dave
connects with fed's certificate: with an authority credential of tb that alice delegated to him he reads as he
writes; with his own user credential, or fed's authority credential, he is told what he needs (not "no user record
fed.dave", fault 12). A slice credential does not act as its holder, an authority credential over a self-signed TLS
certificate is refused for that reason, and Register refuses an expiry in the past before anything is written.
"""

from __future__ import annotations

import os
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.app import start_registry
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import CredentialRequest, Privilege, delegate_credential, issue_credential
from sfa_omf.trust.gid import Gid, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file, new_private_key, private_key_pem
from tests.postgres import empty_postgres
from tests.tls_harness import proxy

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


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[Site]:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    # The peer authority fed: its root is trusted by tb, as an operator drops a peer's root into trusted_roots.
    fed_key = new_private_key()
    fed_chain = (create_gid(FED_AUTHORITY, fed_key.public_key(), fed_key),)
    dave_key = new_private_key()
    dave_chain = (create_gid(DAVE, dave_key.public_key(), fed_key, issuer=fed_chain[0]), *fed_chain)
    Path(settings.trusted_roots_dir, "fed.gid").write_text(chain_pem(fed_chain))
    (tmp_path / "dave.gid").write_text(chain_pem(dave_chain))
    (tmp_path / "dave.pkey").write_bytes(private_key_pem(dave_key))

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


def test_a_peer_user_with_a_delegated_authority_credential_reads_as_well_as_writes(site: Site) -> None:
    """dave holds tb's authority credential (delegated by alice): Register worked before; Resolve, List and
    GetCredential answered fault 12 "no user record fed.dave" (the record named was the caller's, not the one asked
    for). Now he reads; a credential for a slice he is no researcher of is refused as for anyone (3)."""
    credential = site.dave_tb_auth_cred
    assert site.dave.Register({"hrn": "tb.dx", "type": "user"}, [credential]).startswith("-----BEGIN")
    (alice,) = site.dave.Resolve("tb.alice", [credential])
    assert alice["hrn"] == "tb.alice"
    assert "tb.dx" in [record["hrn"] for record in site.dave.List("tb", [credential])]
    refused = site.fault(site.dave.GetCredential, [credential], "tb.demo", "slice")
    assert refused.faultCode == 3, refused.faultString
    assert "fed.dave may not have a credential for slice tb.demo" in refused.faultString
    assert site.dave.Remove("tb.dx", [credential], "user") == 1


def test_a_peer_user_without_an_authority_credential_of_this_authority_is_told_what_he_needs(site: Site) -> None:
    """dave's own user credential: FORBIDDEN (3) saying users of other authorities need an authority credential of
    tb; fed's authority credential: the authority check's refusal (22, it is not tb's), not the user-record miss."""
    before = site.written()
    for call, args in (
        (site.dave.Resolve, ("tb.alice", [site.dave_user_cred])),
        (site.dave.List, ("tb", [site.dave_user_cred])),
        (site.dave.GetCredential, ([site.dave_user_cred], "tb.demo", "slice")),
    ):
        refused = site.fault(call, *args)
        assert refused.faultCode == 3, refused.faultString
        assert "fed.dave is a user of another authority" in refused.faultString
        assert "need an authority credential of tb" in refused.faultString
    for call, args in (
        (site.dave.Resolve, ("tb.alice", [site.fed_auth_cred])),
        (site.dave.Update, ({"hrn": "tb.alice", "email": "x@example.org"}, [site.fed_auth_cred])),
    ):
        refused = site.fault(call, *args)
        assert refused.faultCode == 22, refused.faultString
        assert FED_AUTHORITY in refused.faultString and "no user record" not in refused.faultString
        assert "users of other authorities need an authority credential of tb" in refused.faultString
    assert site.written() == before


def test_a_slice_credential_does_not_act_as_its_holder(site: Site) -> None:
    """alice's tb.demo slice credential updated her own e-mail as if it were her user credential: refused now (22)
    saying which credential is needed; her user credential still does it."""
    slice_cred = site.alice.GetCredential(site.alice_cred, "tb.demo", "slice")
    before = site.written()
    for call, args in (
        (site.alice.Update, ({"hrn": "tb.alice", "email": "alice2@example.org"}, [slice_cred])),
        (site.alice.Resolve, ("tb.bob", [slice_cred])),
    ):
        refused = site.fault(call, *args)
        assert refused.faultCode == 22, refused.faultString
        assert "this is a slice credential" in refused.faultString
        assert "needs your own user credential" in refused.faultString
    assert site.written() == before
    assert site.alice.Update({"hrn": "tb.alice", "email": "alice2@example.org"}, [site.alice_cred]) == 1


def test_an_authority_credential_over_an_untrusted_tls_certificate_is_refused_for_that_reason(
    site: Site, tmp_path: Path
) -> None:
    """alice connects with a self-signed certificate of her own key (sfi.py's bootstrap) and sends her authority
    credential: the refusal says her TLS certificate's chain is not trusted, not "an authority credential updates
    the rest" (she sent one)."""
    key = load_private_key_file(str(site.directory / "users" / "alice" / "sfi" / "tb.alice.pkey"))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tb.alice")])
    now = utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "selfsigned.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "selfsigned.pkey").write_bytes(private_key_pem(key))
    self_signed = proxy(site.url, str(tmp_path / "selfsigned.pem"), str(tmp_path / "selfsigned.pkey"))
    before = site.written()

    refused = site.fault(self_signed.Update, {"hrn": "tb.bob", "email": "b@example.org"}, [site.alice_auth_cred])

    assert refused.faultCode == 3, refused.faultString
    assert "the chain of your TLS client certificate is not trusted" in refused.faultString
    assert "an authority credential updates the rest" not in refused.faultString
    assert site.written() == before
    # The bootstrap itself still works: the user credential over the self-signed certificate reads.
    (bob,) = self_signed.Resolve("tb.bob", [site.alice_cred])
    assert bob["hrn"] == "tb.bob"


def test_register_refuses_an_expiry_in_the_past_before_anything_is_written(site: Site) -> None:
    """Register wrote a slice expiring in 2020 (Resolve showed it, GetCredential answered 21); Update and sfa-omf
    slice create refuse it: so does Register now (1), with no GID file and no record left."""
    before = site.written()
    past = {"hrn": "tb.pastslice", "type": "slice", "expires": "2020-01-01T00:00:00Z", "researchers": ["tb.alice"]}

    refused = site.fault(site.alice.Register, past, [site.alice_auth_cred])

    assert refused.faultCode == 1, refused.faultString
    assert "is in the past" in refused.faultString
    assert site.written() == before
    future = dict(past, expires=(utcnow() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert site.alice.Register(future, [site.alice_auth_cred]).startswith("-----BEGIN")
