"""What the holder of a delegated authority credential may not do at the registry, over real TLS on SQLite and a
real PostgreSQL (the site of test_registry_callers.py: alice a PI of tb delegated tb's authority credential to dave,
a user of the trusted authority fed, without the right to delegate it further).

He may not change who the PIs of tb are, neither naming himself nor a user record he registered with his own key:
the PIs get a fresh, undelegated authority credential from GetCredential, which would outgrow and outlive the
delegation. A credential naming no owner is refused as such (22), and a certificate named like a record of this
registry that is not the caller's own user record does not read under that record's name (22).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import chain_pem, gid_from_der, load_gid_chain
from sfa_omf.trust.pki import new_private_key, private_key_pem
from tests.registry.conftest import Site
from tests.tls_harness import proxy


def test_a_delegate_may_not_change_the_pis_of_the_authority(site: Site, tmp_path: Path) -> None:
    """dave added himself to tb's reg-pis with his delegated credential, then GetCredential(tb, authority) gave him
    a fresh, delegatable 30-day authority credential that kept working after alice (his delegator) was removed.
    Now changing the PIs needs a PI's own authority credential (3); alice's own still changes them."""
    delegated = site.dave_tb_auth_cred
    before = site.written()

    refused = site.fault(site.dave.Update, {"hrn": "tb", "type": "authority", "reg-pis": ["fed.dave"]}, [delegated])

    assert refused.faultCode == 3, refused.faultString
    assert "changing the PIs of tb needs a PI's own authority credential (not a delegated one)" in refused.faultString
    assert site.written() == before
    refused = site.fault(site.dave.GetCredential, [delegated], "tb", "authority")
    assert refused.faultCode == 3, refused.faultString
    # The same through "pis", and through a user record dave registers with his own key (allowed: Register).
    dave_certificate = (tmp_path / "dave.gid").read_text()
    dave2_chain = site.dave.Register({"hrn": "tb.dave2", "type": "user", "gid": dave_certificate}, [delegated])
    refused = site.fault(site.dave.Update, {"hrn": "tb", "type": "authority", "pis": ["tb.dave2"]}, [delegated])
    assert refused.faultCode == 3, refused.faultString
    (tmp_path / "dave2.gid").write_text(dave2_chain)
    dave2 = proxy(site.url, str(tmp_path / "dave2.gid"), str(tmp_path / "dave.pkey"))
    dave2_cred = dave2.GetSelfCredential(dave2_chain, "tb.dave2", "user")
    refused = site.fault(dave2.GetCredential, dave2_cred, "tb", "authority")
    assert refused.faultCode == 3, refused.faultString
    (authority,) = site.alice.Resolve("tb", [site.alice_cred])
    assert authority["reg-pis"] == ["tb.alice"]
    # A PI's own authority credential changes them.
    assert (
        site.alice.Update(
            {"hrn": "tb", "type": "authority", "reg-pis": ["tb.alice", "fed.dave"]}, [site.alice_auth_cred]
        )
        == 1
    )
    assert site.dave.GetCredential([delegated], "tb", "authority").startswith("<?xml")


def test_a_credential_naming_no_owner_is_refused_as_such(site: Site, tmp_path: Path) -> None:
    """A credential whose owner certificate carries no URN (SFA's old form, CN tb.old) answered fault 1 "'' is not
    a GENI URN" (the registry read the empty owner URN as a name); now 22 "names no owner", as docs/trust.md says."""
    authority = LocalAuthority.load(str(site.directory), "tb")
    old_key = new_private_key()
    issuer = authority.chain[0]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tb.old")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(old_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utcnow() - timedelta(minutes=5))
        .not_valid_after(utcnow() + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:uuid:{uuid.uuid4()}")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(authority.key, hashes.SHA256())
    )
    old_chain = (gid_from_der(certificate.public_bytes(serialization.Encoding.DER)), *authority.chain)
    assert old_chain[0].urn is None
    (tmp_path / "old.gid").write_text(chain_pem(old_chain))
    (tmp_path / "old.pkey").write_bytes(private_key_pem(old_key))
    old = proxy(site.url, str(tmp_path / "old.gid"), str(tmp_path / "old.pkey"))
    old_cred = authority.credential(old_chain, old_chain, can_delegate=False)

    for call, args in ((old.Resolve, ("tb.alice", [old_cred])), (old.List, ("tb", [old_cred]))):
        refused = site.fault(call, *args)
        assert refused.faultCode == 22, refused.faultString
        assert "this credential names no owner" in refused.faultString


def test_a_certificate_named_like_another_record_does_not_read_as_it(site: Site, tmp_path: Path) -> None:
    """dave registers slice tb.eve with his own key (the delegation allows it) and connects with the slice's GID:
    the registry made him an unstored "user tb.eve" (with whatever memberships that name has). Now 22 names both."""
    delegated = site.dave_tb_auth_cred
    dave_certificate = (tmp_path / "dave.gid").read_text()
    eve_chain = site.dave.Register({"hrn": "tb.eve", "type": "slice", "gid": dave_certificate}, [delegated])
    assert load_gid_chain(eve_chain)[0].urn == "urn:publicid:IDN+tb+slice+eve"
    (tmp_path / "eve.gid").write_text(eve_chain)
    as_eve = proxy(site.url, str(tmp_path / "eve.gid"), str(tmp_path / "dave.pkey"))

    for call, args in (
        (as_eve.Resolve, ("tb.alice", [delegated])),
        (as_eve.GetCredential, ([delegated], "tb.eve", "slice")),
    ):
        refused = site.fault(call, *args)
        assert refused.faultCode == 22, refused.faultString
        assert "urn:publicid:IDN+tb+slice+eve" in refused.faultString
        assert "the slice record" in refused.faultString
    # Over the certificate fed issued him, the same credential reads as fed.dave (no record here: unstored).
    (alice,) = site.dave.Resolve("tb.alice", [delegated])
    assert alice["hrn"] == "tb.alice"


def test_a_delegate_may_not_register_a_name_the_pis_list(site: Site, tmp_path: Path) -> None:
    """A PI named tb.future a PI before it was registered; dave registered that name with his own key through his
    delegated credential, then GetCredential(tb, authority) gave him a fresh, delegatable authority credential. Now
    registering a name the PIs list needs a PI's own authority credential (3); other names stay his to register."""
    assert (
        site.alice.Update(
            {"hrn": "tb", "type": "authority", "reg-pis": ["tb.alice", "tb.future"]}, [site.alice_auth_cred]
        )
        == 1
    )
    delegated = site.dave_tb_auth_cred
    dave_certificate = (tmp_path / "dave.gid").read_text()
    before = site.written()

    refused = site.fault(site.dave.Register, {"hrn": "tb.future", "type": "user", "gid": dave_certificate}, [delegated])

    assert refused.faultCode == 3, refused.faultString
    assert "tb.future is named a PI of tb: registering it needs a PI's own authority credential" in refused.faultString
    assert site.written() == before
    assert site.dave.Register({"hrn": "tb.other", "type": "user", "gid": dave_certificate}, [delegated])
    assert site.alice.Register({"hrn": "tb.future", "type": "user"}, [site.alice_auth_cred])
