"""Defects a hunt found in the trust layer, each with the attack that showed it.

* A credential's <owner_urn>/<target_urn> must name the GID it carries, also when the GID has no URN (SFA's old
  form, the HRN only in its CN): else a trusted peer names another authority's slice or user.
* A URN that does not parse in a credential is a refusal of that credential (MALFORMED), not a BADARGS of the call:
  the caller's other credentials are still tried.
* A caller chain verified while the roots are being replaced is not remembered under the roots of before.
* Certificates from callers nobody trusts are not kept parsed beyond a small budget.
* ``trust add-root`` writes only inside the trusted-roots directory, and takes an authority's renewed root.
"""

from __future__ import annotations

import base64
import gc
import os
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from lxml import etree

from sfa_omf.errors import REASON_CODES, GeniCode, GeniError, Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust import gid as gid_module
from sfa_omf.trust import xmldsig
from sfa_omf.trust.credential import (
    CredentialRequest,
    Privilege,
    _credential_element,
    issue_credential,
    new_document_root,
    read_credential,
    sign_document,
)
from sfa_omf.trust.gid import Gid, GidChain, gid_from_certificate
from sfa_omf.trust.pki import create_gid, issue_chain, new_private_key
from sfa_omf.trust.roots import TrustedRoots, add_trusted_root, load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache

PRIVILEGES = (Privilege("control", True), Privilege("info", True))


@dataclass(frozen=True)
class Authority:
    """A root authority of its own (a federation peer), able to issue GIDs with or without a URN."""

    name: str
    key: rsa.RSAPrivateKey
    gid: Gid

    @classmethod
    def create(cls, name: str) -> Authority:
        key = new_private_key()
        return cls(name, key, create_gid(f"urn:publicid:IDN+{name}+authority+sa", key.public_key(), key))

    @property
    def chain(self) -> GidChain:
        return (self.gid,)

    def issue(self, kind: str, name: str) -> tuple[rsa.RSAPrivateKey, GidChain]:
        key = new_private_key()
        gid = create_gid(f"urn:publicid:IDN+{self.name}+{kind}+{name}", key.public_key(), self.key, issuer=self.gid)
        return key, issue_chain(gid, self.chain)

    def issue_urnless(self, hrn: str) -> tuple[rsa.RSAPrivateKey, GidChain]:
        """A GID in SFA's old form: the HRN only in the CN, no URN in subjectAltName."""
        key = new_private_key()
        start = utcnow() - timedelta(minutes=5)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hrn)]))
            .issuer_name(self.gid.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=100))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return key, (gid_from_certificate(certificate), *self.chain)

    def credential(
        self, owner: GidChain, target: GidChain, owner_urn: str | None = None, target_urn: str | None = None
    ) -> str:
        """A credential signed by this authority, its <owner_urn>/<target_urn> texts written as given."""
        request = CredentialRequest(owner, target, utcnow() + timedelta(days=1), PRIVILEGES)
        root = new_document_root()
        element = _credential_element(request, "ref0")
        for tag, text in (("owner_urn", owner_urn), ("target_urn", target_urn)):
            if text is not None:
                written = element.find(tag)
                assert written is not None
                written.text = text
        root.append(element)
        return sign_document(root, "ref0", self.key, self.chain)


@pytest.fixture(scope="module")
def tb() -> Authority:
    return Authority.create("tb")


@pytest.fixture(scope="module")
def evil() -> Authority:
    return Authority.create("evil")


@pytest.fixture
def federation(tb: Authority, evil: Authority) -> CredentialVerifier:
    """Both authorities trusted, as after ``trust add-root`` of evil's root."""
    return CredentialVerifier(TrustedRoots((tb.gid, evil.gid)), VerdictCache())


def refusal(
    verifier: CredentialVerifier, caller: GidChain, credentials: list[str], target: str, operation: str
) -> TrustError:
    with pytest.raises(TrustError) as refused:
        verifier.check_call(caller, credentials, target, operation, utcnow())
    return refused.value


# ---------------------------------------------------------------------------------------------------------------
# 1. The URN a credential writes must name the GID it carries


def test_a_peer_cannot_name_another_authoritys_slice_over_its_own_urnless_gid(
    evil: Authority, federation: CredentialVerifier
) -> None:
    _, mallory = evil.issue("user", "mallory")
    _, foo = evil.issue_urnless("evil.foo")
    forged = evil.credential(mallory, foo, target_urn="urn:publicid:IDN+tb+slice+demo")
    refused = refusal(federation, mallory, [forged], "urn:publicid:IDN+tb+slice+demo", "deletesliver")
    assert refused.reason == Reason.MALFORMED and REASON_CODES[refused.reason] == GeniCode.CREDENTIAL_INVALID
    assert "target_urn urn:publicid:IDN+tb+slice+demo names 'tb.demo'" in refused.message
    assert "'evil.foo' (its CN" in refused.message


def test_a_peer_cannot_name_another_authoritys_user_as_owner_over_its_own_urnless_gid(
    evil: Authority, federation: CredentialVerifier
) -> None:
    _, mallory = evil.issue_urnless("evil.mallory")
    _, own_slice = evil.issue("slice", "bar")
    forged = evil.credential(mallory, own_slice, owner_urn="urn:publicid:IDN+tb+user+alice")
    refused = refusal(federation, mallory, [forged], own_slice[0].urn or "", "createsliver")
    assert refused.reason == Reason.MALFORMED
    assert "owner_urn urn:publicid:IDN+tb+user+alice names 'tb.alice'" in refused.message
    # Nor may any caller who is alice by URN use it: the credential is refused before anyone's use is judged.
    with pytest.raises(TrustError) as read:
        read_credential(forged)
    assert read.value.reason == Reason.MALFORMED


def test_urnless_gids_are_taken_with_no_urn_or_the_urn_of_their_cn(
    evil: Authority, federation: CredentialVerifier
) -> None:
    """The control: SFA's old form is still read, with the text left empty or naming the CN."""
    _, mallory = evil.issue_urnless("evil.mallory")
    _, foo = evil.issue_urnless("evil.foo")
    empty = federation.verify(evil.credential(mallory, foo, owner_urn="", target_urn=""), utcnow())
    assert (empty.owner_urn, empty.target_urn) == ("", "")
    named = federation.verify(
        evil.credential(mallory, foo, "urn:publicid:IDN+evil+user+mallory", "urn:publicid:IDN+evil+slice+foo"),
        utcnow(),
    )
    assert (named.owner_urn, named.target_urn) == (
        "urn:publicid:IDN+evil+user+mallory",
        "urn:publicid:IDN+evil+slice+foo",
    )


@pytest.mark.parametrize("text", ["urn:publicid:IDN+evil", "urn:publicid:IDN++slice+foo", "evil.foo"])
def test_a_urn_text_that_does_not_parse_is_refused(evil: Authority, federation: CredentialVerifier, text: str) -> None:
    _, mallory = evil.issue("user", "mallory")
    _, foo = evil.issue_urnless("evil.foo")
    with pytest.raises(TrustError) as refused:
        federation.verify(evil.credential(mallory, foo, target_urn=text), utcnow())
    assert refused.value.reason == Reason.MALFORMED and "does not parse" in refused.value.message


def test_a_urn_text_is_compared_with_the_gids_urn_canonically(tb: Authority, federation: CredentialVerifier) -> None:
    """Prefix and type are case-insensitive, authority and name are not (as everywhere else URNs are compared)."""
    _, alice = tb.issue("user", "alice")
    _, demo = tb.issue("slice", "demo")
    same = federation.verify(tb.credential(alice, demo, target_urn="URN:PUBLICID:IDN+tb+SLICE+demo"), utcnow())
    assert same.target_urn == "URN:PUBLICID:IDN+tb+SLICE+demo"
    for other in ("urn:publicid:IDN+TB+slice+demo", "urn:publicid:IDN+tb+slice+DEMO"):
        with pytest.raises(TrustError) as refused:
            federation.verify(tb.credential(alice, demo, target_urn=other), utcnow())
        assert (
            refused.value.reason == Reason.MALFORMED and "differs from the URN in target_gid" in refused.value.message
        )


# ---------------------------------------------------------------------------------------------------------------
# 5. One crafted credential does not stop the others from being tried


def _certificate_named(urn: str, issuer: Authority | None = None) -> GidChain:
    """A certificate whose subjectAltName holds ``urn`` (any text), self-signed or issued by ``issuer``."""
    key = new_private_key()
    start = utcnow() - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.gid.certificate.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(urn)]), critical=False)
        .sign(issuer.key if issuer else key, hashes.SHA256())
    )
    return (gid_from_certificate(certificate), *(issuer.chain if issuer else ()))


def test_a_credential_whose_gid_urn_does_not_parse_is_refused_and_the_next_one_tried(tb: Authority) -> None:
    alice_key, alice = tb.issue("user", "alice")
    _, demo = tb.issue("slice", "demo")
    good = issue_credential(CredentialRequest(alice, demo, utcnow() + timedelta(days=1), PRIVILEGES), tb.key, tb.chain)
    # alice delegates her credential to a target whose certificate carries a URN that does not parse.
    parsed = read_credential(good)
    root = new_document_root(parsed.root)
    junk = _certificate_named("urn:publicid:IDN+x")
    child = _credential_element(CredentialRequest(alice, junk, utcnow() + timedelta(hours=1), PRIVILEGES[1:]), "ref1")
    parent = etree.SubElement(child, "parent")
    parent.append(next(iter(parsed.root.iterfind("credential"))))
    root.append(child)
    signatures = etree.SubElement(root, "signatures")
    signatures.extend(list(next(iter(parsed.root.iterfind("signatures")))))
    crafted = sign_document(root, "ref1", alice_key, alice)
    verifier = CredentialVerifier(TrustedRoots((tb.gid,)), VerdictCache())
    with pytest.raises(GeniError) as alone:
        verifier.verify(crafted, utcnow())
    assert isinstance(alone.value, TrustError) and alone.value.reason == Reason.MALFORMED
    assert "does not parse" in alone.value.message
    allowed = verifier.check_call(alice, [crafted, good], demo[0].urn, "sliverstatus", utcnow())
    assert allowed.target_urn == demo[0].urn and allowed.depth == 0


def test_a_chain_whose_certificate_names_nothing_readable_is_invalid(tb: Authority) -> None:
    """verify_chain reads every certificate's HRN for the naming rules: one that does not parse (here issued by an
    authority of the caller's own making) is INVALID_CHAIN, for a caller CALLER_UNTRUSTED; never a BADARGS."""
    junk_authority = Authority.create("junk")
    verifier = CredentialVerifier(TrustedRoots((tb.gid,)), VerdictCache())
    with pytest.raises(GeniError) as refused:
        verifier.verify_caller(_certificate_named("urn:publicid:IDN+x", junk_authority), utcnow())
    assert isinstance(refused.value, TrustError) and refused.value.reason == Reason.CALLER_UNTRUSTED
    assert "names nothing we can read" in refused.value.message


# ---------------------------------------------------------------------------------------------------------------
# 2. The roots are read once per caller check


class RootsReplacedAfterFirstRead(CredentialVerifier):
    """A verifier whose roots the server's watcher replaces right after their first read by a check: what the
    reactor thread may do at any instant while a worker thread verifies a caller (deterministic here)."""

    def __init__(self, first: TrustedRoots, then: TrustedRoots) -> None:
        super().__init__(first, VerdictCache())
        self._then, self._reads = then, 0

    @property  # type: ignore[override]
    def roots(self) -> TrustedRoots:
        self._reads += 1
        return self._first if self._reads == 1 else self._then

    @roots.setter
    def roots(self, value: TrustedRoots) -> None:
        self._first = self._then = value
        self._reads = 1  # a replacement done: every read from now on gives it


def test_a_root_added_then_removed_does_not_stay_trusted_from_the_cache(tb: Authority, evil: Authority) -> None:
    _, mallory = evil.issue("user", "mallory")
    only_tb = TrustedRoots((tb.gid,))
    verifier = RootsReplacedAfterFirstRead(only_tb, TrustedRoots((tb.gid, evil.gid)))
    # mallory calls while evil's root is being added: either answer is right for this call...
    try:
        verifier.verify_caller(mallory, utcnow())
    except TrustError as exc:
        assert exc.reason == Reason.CALLER_UNTRUSTED
    # ...but once the operator removed the root again (the roots are those of before), she is not trusted.
    verifier.roots = TrustedRoots((tb.gid,))
    assert verifier.roots.fingerprint == only_tb.fingerprint
    with pytest.raises(TrustError) as refused:
        verifier.verify_caller(mallory, utcnow())
    assert refused.value.reason == Reason.CALLER_UNTRUSTED


# ---------------------------------------------------------------------------------------------------------------
# 3. Certificates from callers nobody trusts are not kept


def _padded_certificate(key: rsa.RSAPrivateKey, serial: int) -> str:
    """A self-signed certificate of about 23 KB (an unknown extension pads it), as PEM."""
    start = utcnow() - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"junk{serial}")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), os.urandom(23_000)), False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _junk_bytes_alive(junk: set[bytes]) -> int:
    gc.collect()
    return sum(len(item.der or b"") for item in gc.get_objects() if isinstance(item, Gid) and item.der in junk)


def test_certificates_of_callers_nobody_trusts_are_not_kept_beyond_a_small_budget(
    tb: Authority, empty_caches: None
) -> None:
    """The registry verifies every credential of a call from any TLS client (sfi.py's bootstrap); reading one
    parses its owner and target certificates before any signature or chain is checked. 100 refused credentials of
    two distinct 23 KB certificates each (4.6 MB) must not stay in memory, nor push out a trusted caller's."""
    verifier = CredentialVerifier(TrustedRoots((tb.gid,)), VerdictCache())
    _, alice = tb.issue("user", "alice")
    # Her chain as a server receives it over TLS: read from the certificates' DER bytes.
    alice_again = tuple(
        gid_module.gid_from_der(gid.certificate.public_bytes(serialization.Encoding.DER)) for gid in alice
    )
    verifier.verify_caller(alice_again, utcnow())  # a trusted caller: her certificates are kept
    key = new_private_key()
    junk: set[bytes] = set()
    for number in range(100):
        owner, target = _padded_certificate(key, 2 * number + 1), _padded_certificate(key, 2 * number + 2)
        junk.update(
            x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
            for pem in (owner, target)
        )
        document = (
            f"<signed-credential><credential xml:id='ref0'><type>privilege</type><owner_gid>{owner}</owner_gid>"
            f"<target_gid>{target}</target_gid><expires>2030-01-01T00:00:00Z</expires><privileges/></credential>"
            "<signatures/></signed-credential>"
        )
        with pytest.raises(TrustError):
            verifier.verify(document, utcnow())
    assert _junk_bytes_alive(junk) <= 1024 * 1024  # RECENT_CACHE_BYTES
    assert all(gid_module.gid_from_der(gid.der or b"") is gid for gid in alice_again)  # still kept, parsed once


@pytest.fixture
def empty_caches() -> None:
    """Start from empty caches of parsed certificates, so that what a test finds kept is what it caused."""
    gid_module.forget_parsed()


def test_a_signer_key_too_large_to_verify_with_is_refused_and_never_kept(tb: Authority) -> None:
    """Signer keys are loaded before the signer's chain is checked: a 40 000-bit RSA key (5 KB, anyone can write
    one in a certificate) is refused by its size, not loaded into the cache of keys."""
    _, alice = tb.issue("user", "alice")
    _, demo = tb.issue("slice", "demo")
    genuine = issue_credential(
        CredentialRequest(alice, demo, utcnow() + timedelta(days=1), PRIVILEGES), tb.key, tb.chain
    )
    modulus = secrets.randbits(40_000) | (1 << 39_999) | 1
    huge = rsa.RSAPublicNumbers(65537, modulus).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "huge")])
    start = utcnow() - timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(huge)
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .sign(tb.key, hashes.SHA256())
    )
    found = re.search(r"<X509Certificate>([^<]+)</X509Certificate>", genuine)
    assert found is not None
    swapped = (
        genuine[: found.start(1)]
        + base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")
        + genuine[found.end(1) :]
    )
    xmldsig.forget_keys()
    with pytest.raises(TrustError) as refused:
        CredentialVerifier(TrustedRoots((tb.gid,))).verify(swapped, utcnow())
    assert refused.value.reason == Reason.SIGNATURE and "RSA key of 40000 bits" in refused.value.message
    assert xmldsig._cached_public_key.cache_info().currsize == 0


# ---------------------------------------------------------------------------------------------------------------
# 4 and 6. trust add-root


def test_add_root_refuses_a_name_that_would_write_outside_the_directory(tmp_path: Path) -> None:
    roots_dir, outside = tmp_path / "trusted_roots", tmp_path / "outside" / "pwned"
    roots_dir.mkdir()
    outside.parent.mkdir()
    for authority in (str(outside), "a:..:..:x", "evil/../../x"):
        key = new_private_key()
        root = create_gid(f"urn:publicid:IDN+{authority}+authority+sa", key.public_key(), key)
        with pytest.raises(TrustError) as refused:
            add_trusted_root(str(roots_dir), root.pem().encode("ascii"), utcnow())
        assert refused.value.reason == Reason.INVALID_CHAIN and "cannot be a file name" in refused.value.message
    assert list(roots_dir.iterdir()) == [] and list(outside.parent.iterdir()) == []
    assert not list(tmp_path.glob("*.gid"))


def test_add_root_takes_an_authoritys_renewed_root_with_the_same_key(tmp_path: Path) -> None:
    roots_dir = tmp_path / "trusted_roots"
    key = new_private_key()
    urn = "urn:publicid:IDN+peer+authority+sa"
    old = create_gid(urn, key.public_key(), key, lifetime=timedelta(days=30))
    renewed = create_gid(urn, key.public_key(), key, lifetime=timedelta(days=365))
    assert add_trusted_root(str(roots_dir), old.pem().encode("ascii"), utcnow()) == (old, True)
    anchor, added = add_trusted_root(str(roots_dir), renewed.pem().encode("ascii"), utcnow())
    assert added and anchor.fingerprint == renewed.fingerprint
    assert [path.name for path in roots_dir.iterdir()] == ["peer.gid"]  # replaced, not beside it
    assert [gid.fingerprint for gid in load_trusted_roots(str(roots_dir)).anchors] == [renewed.fingerprint]
    # The older one offered again: the newer stays.
    anchor, added = add_trusted_root(str(roots_dir), old.pem().encode("ascii"), utcnow())
    assert not added and anchor.fingerprint == renewed.fingerprint
    assert [gid.fingerprint for gid in load_trusted_roots(str(roots_dir)).anchors] == [renewed.fingerprint]
    # Another key under the same name is still a look-alike.
    other_key = new_private_key()
    look_alike = create_gid(urn, other_key.public_key(), other_key, lifetime=timedelta(days=400))
    with pytest.raises(TrustError) as refused:
        add_trusted_root(str(roots_dir), look_alike.pem().encode("ascii"), utcnow())
    assert "another key" in refused.value.message
    assert [gid.fingerprint for gid in load_trusted_roots(str(roots_dir)).anchors] == [renewed.fingerprint]
