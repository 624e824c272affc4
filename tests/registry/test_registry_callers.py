"""Who may call the registry's reads, and with which credential, over real TLS on SQLite and a real PostgreSQL.

Authority ``tb`` (alice a PI, bob; both researchers of tb.demo) trusts a second authority ``fed`` whose user dave
connects with fed's certificate: with an authority credential of tb that alice delegated to him he reads as he
writes; with his own user credential, or fed's authority credential, he is told what he needs (not "no user record
fed.dave", fault 12). A slice credential does not act as its holder, an authority credential over a self-signed TLS
certificate is refused for that reason, and Register refuses an expiry in the past before anything is written.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sfa_omf.times import utcnow
from sfa_omf.trust.pki import load_private_key_file, private_key_pem
from tests.registry.conftest import FED_AUTHORITY, Site
from tests.tls_harness import proxy


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
