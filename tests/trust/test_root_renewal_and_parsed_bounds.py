"""A review of the trust layer's hunt fixes found three more defects; each test here shows one.

* An authority's renewed root must keep old chains working: SFA and gcf GID files and credentials carry the
  authority's root after the leaf, and after a renewal that copy is the old root, which expires while the renewed
  root (the same key) still signs the leaf. SFA stops at the first certificate a trusted root signed; so do we.
* ``trust add-root`` takes a renewal only for the same subject, URN and key, self-signed: anyone holding an
  authority's public key could otherwise move its naming scope.
* ParsedCertificates' bounds are on what is really held: a certificate's parsed form is many times its DER bytes,
  and variants of a trusted chain's PEM text (junk or whitespace between the blocks, certificates repeated) must not
  push out the texts of trusted callers.

The module objects (``roots_module``, ``gid_module``) are used for the names these fixes added, so that each test
fails on its own against the code before them.
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from sfa_omf.errors import Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust import gid as gid_module
from sfa_omf.trust import roots as roots_module
from sfa_omf.trust.credential import CredentialRequest, Privilege, issue_credential
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, gid_from_certificate, gid_from_der, load_gid_chain
from sfa_omf.trust.pki import create_gid, issue_chain, new_private_key
from sfa_omf.trust.roots import TrustedRoots, add_trusted_root, load_trusted_roots, verify_chain
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache

PEER = "urn:publicid:IDN+peer+authority+sa"
PRIVILEGES = (Privilege("info", True),)


@dataclass(frozen=True)
class Renewal:
    """A peer authority whose 30-day root was renewed for a year with the same key, and GIDs it issued under the
    old root (their issuer name is the same), checked at ``later``: the old root expired, nothing else did."""

    key: rsa.RSAPrivateKey
    old: Gid
    renewed: Gid
    ann_key: rsa.RSAPrivateKey
    ann: Gid
    demo: Gid
    later: datetime

    def issue(self, urn: str, days: int, issuer: Gid | None = None, key: rsa.RSAPrivateKey | None = None) -> Gid:
        subject_key = new_private_key()
        return create_gid(
            urn, subject_key.public_key(), key or self.key, issuer=issuer or self.old, lifetime=timedelta(days=days)
        )


@pytest.fixture(scope="module")
def renewal() -> Renewal:
    key = new_private_key()
    old = create_gid(PEER, key.public_key(), key, lifetime=timedelta(days=30))
    renewed = create_gid(PEER, key.public_key(), key, lifetime=timedelta(days=365))
    ann_key = new_private_key()
    ann = create_gid(
        "urn:publicid:IDN+peer+user+ann", ann_key.public_key(), key, issuer=old, lifetime=timedelta(days=300)
    )
    demo_key = new_private_key()
    demo = create_gid(
        "urn:publicid:IDN+peer+slice+demo", demo_key.public_key(), key, issuer=old, lifetime=timedelta(days=300)
    )
    return Renewal(key, old, renewed, ann_key, ann, demo, later=utcnow() + timedelta(days=60))


# ---------------------------------------------------------------------------------------------------------------
# 1. A renewed root keeps the chains that still carry the old one working


def test_a_chain_ending_with_the_expired_root_it_renews_verifies_against_the_renewed_root(renewal: Renewal) -> None:
    roots = TrustedRoots((renewal.renewed,))
    chain = issue_chain(renewal.ann, (renewal.old,))  # as SFA's GID files: the leaf and its authority's root
    assert renewal.later > renewal.old.not_after
    assert verify_chain(chain, roots, renewal.later) is renewal.renewed
    # The caller's chain: accepted, and its verdict kept while the certificates it rests on are valid (ann and the
    # renewed root), not dropped at once for the old copy's expiry.
    cache = VerdictCache()
    verifier = CredentialVerifier(roots, cache)
    assert verifier.verify_caller(chain, renewal.later) is renewal.ann
    verdict = cache.get_chain((tuple(gid.fingerprint for gid in chain), roots.fingerprint), renewal.later)
    assert verdict is not None and verdict.valid_until == min(renewal.ann.not_after, renewal.renewed.not_after)
    # A credential the authority signs with its renewed root, over chains that carry the old one.
    expires = renewal.later + timedelta(days=400)  # after the certificates: they bound the verdict
    credential = issue_credential(
        CredentialRequest(chain, issue_chain(renewal.demo, (renewal.old,)), expires, PRIVILEGES),
        renewal.key,
        (renewal.renewed,),
    )
    verified = verifier.check_call(chain, [credential], renewal.demo.urn, "sliverstatus", renewal.later)
    assert verified.valid_until == min(
        expires, renewal.ann.not_after, renewal.demo.not_after, renewal.renewed.not_after
    )
    assert verified.valid_from == max(renewal.ann.not_before, renewal.demo.not_before, renewal.renewed.not_before)


def test_an_expired_leaf_or_intermediate_is_still_refused_under_a_renewed_root(renewal: Renewal) -> None:
    roots = TrustedRoots((renewal.renewed,))
    short_lived = renewal.issue("urn:publicid:IDN+peer+user+bob", days=30)
    lab_key = new_private_key()
    lab = create_gid(
        "urn:publicid:IDN+peer:lab+authority+sa",
        lab_key.public_key(),
        renewal.key,
        issuer=renewal.old,
        lifetime=timedelta(days=30),
    )
    carol = renewal.issue("urn:publicid:IDN+peer:lab+user+carol", days=300, issuer=lab, key=lab_key)
    for chain, expired in (
        ((short_lived, renewal.old), short_lived),
        ((short_lived,), short_lived),
        ((carol, lab, renewal.old), lab),
        ((carol, lab), lab),
    ):
        with pytest.raises(TrustError) as refused:
            verify_chain(chain, roots, renewal.later)
        assert refused.value.reason == Reason.CERTIFICATE_EXPIRED
        assert refused.value.message.startswith(f"certificate {expired.urn} expired at "), refused.value.message
    with pytest.raises(TrustError) as refused:  # the caller's own chain, as from TLS
        CredentialVerifier(roots, VerdictCache()).verify_caller((carol, lab, renewal.old), renewal.later)
    assert refused.value.reason == Reason.CERTIFICATE_EXPIRED and lab.urn in refused.value.message
    assert verify_chain((carol, lab, renewal.old), roots, utcnow()) is renewal.renewed  # only expiry refuses it


def test_the_valid_one_of_an_authoritys_old_and_renewed_roots_is_the_anchor(renewal: Renewal) -> None:
    """Both files left in trusted_roots/ (dropped by hand under two names): the expired one is not chosen."""
    roots = TrustedRoots((renewal.old, renewal.renewed))
    for chain in ((renewal.ann,), (renewal.ann, renewal.old)):
        assert verify_chain(chain, roots, renewal.later) is renewal.renewed


# ---------------------------------------------------------------------------------------------------------------
# 2. trust add-root: a renewal keeps the subject, the URN and the key, and is self-signed


def root_certificate(subject: str, urn: str, public_key: rsa.RSAPublicKey, signing_key: rsa.RSAPrivateKey) -> bytes:
    """A CA root naming urn, holding public_key, signed by signing_key (self-signed when it is the same key)."""
    start = utcnow() - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(urn)]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_add_root_refuses_a_renewal_that_changes_the_name_or_is_not_self_signed(
    renewal: Renewal, tmp_path: Path
) -> None:
    roots_dir = tmp_path / "trusted_roots"
    assert add_trusted_root(str(roots_dir), renewal.old.pem().encode("ascii"), utcnow())[1]
    stranger = new_private_key()
    public = renewal.key.public_key()
    for offered, why in (
        (root_certificate("peer", "urn:publicid:IDN+tb:x+authority+sa", public, renewal.key), "under another name"),
        (root_certificate("peer", "urn:publicid:IDN+tb:x+authority+sa", public, stranger), "under another name"),
        (root_certificate("peer2", PEER, public, renewal.key), "under another name"),
        (root_certificate("peer", PEER, public, stranger), "not self-signed"),
    ):
        with pytest.raises(TrustError) as refused:
            add_trusted_root(str(roots_dir), offered, utcnow())
        assert refused.value.reason == Reason.UNTRUSTED_CHAIN and why in refused.value.message
        assert "look-alike" in refused.value.message
        assert [path.name for path in roots_dir.iterdir()] == ["peer.gid"]
        assert [gid.fingerprint for gid in load_trusted_roots(str(roots_dir)).anchors] == [renewal.old.fingerprint]


def test_trust_root_says_whether_it_added_renewed_or_already_trusted_a_root(renewal: Renewal, tmp_path: Path) -> None:
    roots_dir = tmp_path / "trusted_roots"
    path = str(roots_dir / "peer.gid")
    added = roots_module.trust_root(str(roots_dir), renewal.old.pem().encode("ascii"), utcnow())
    assert (added.outcome, added.path, added.anchor.fingerprint) == ("added", path, renewal.old.fingerprint)
    renewed = roots_module.trust_root(str(roots_dir), renewal.renewed.pem().encode("ascii"), utcnow())
    assert (renewed.outcome, renewed.path, renewed.anchor.fingerprint) == ("renewed", path, renewal.renewed.fingerprint)
    for again in (renewal.renewed, renewal.old):  # the same root, or the older one: the renewed root stays
        kept = roots_module.trust_root(str(roots_dir), again.pem().encode("ascii"), utcnow())
        assert (kept.outcome, kept.path, kept.anchor.fingerprint) == (
            "trusted already",
            path,
            renewal.renewed.fingerprint,
        )
    assert [gid.fingerprint for gid in load_trusted_roots(str(roots_dir)).anchors] == [renewal.renewed.fingerprint]


# ---------------------------------------------------------------------------------------------------------------
# 3. ParsedCertificates holds what its bounds say


@pytest.fixture
def empty_caches() -> None:
    """Start from empty caches of parsed certificates, so that what a test finds kept is what it caused."""
    gid_module.forget_parsed()


def tiny_certificates(count: int) -> list[bytes]:
    """Self-signed Ed25519 certificates of a one-letter name: about 200 bytes of DER each."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    start = utcnow() - timedelta(minutes=5)
    return [
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .sign(key, None)
        .public_bytes(serialization.Encoding.DER)
        for serial in range(1, count + 1)
    ]


def held_by(read: list[bytes]) -> tuple[int, int]:
    """(Gids of these DER bytes alive in this process, Python heap they and the caches hold), from a tracemalloc
    started before they were read."""
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    wanted = set(read)
    alive = sum(1 for item in gc.get_objects() if isinstance(item, Gid) and item.der in wanted)
    return alive, held


def test_certificates_nobody_trusts_are_kept_within_the_memory_budget(empty_caches: None) -> None:
    """1 000 certificates of 200 bytes are 0.2 MB of DER, well within the 1 MiB budget by bytes; parsed (their
    names, extensions and what verification caches) they hold several times as much, and only what fits in 1 MiB
    of memory may stay."""
    ders = tiny_certificates(1000)
    gc.collect()
    tracemalloc.start()
    try:
        for der in ders:
            gid = gid_from_der(der)  # and what verification computes on it:
            assert gid.subject_cn == "x" and gid.hrn_parts == ("x",) and len(gid.fingerprint) == len(gid.key_id) == 64
        del gid
        alive, held = held_by(ders)
    finally:
        tracemalloc.stop()
    assert held <= gid_module.RECENT_CACHE_BYTES, f"{alive} certificates kept hold {held} bytes of Python heap"
    assert 0 < alive < len(ders)


def densest_certificate(entries: int) -> bytes:
    """A certificate made of the shortest name entries there are: RDNs of a two-arc OID and an empty value."""
    key = ed25519.Ed25519PrivateKey.generate()
    rdn = x509.RelativeDistinguishedName([x509.NameAttribute(ObjectIdentifier("1.2"), "")])
    name = x509.Name([rdn] * entries)
    start = utcnow() - timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .sign(key, None)
        .public_bytes(serialization.Encoding.DER)
    )


@pytest.mark.parametrize("kind", ["densest", "usual"])
def test_the_memory_estimate_of_a_kept_certificate_covers_what_it_holds(kind: str) -> None:
    """recent_cost is a bound only if no certificate holds more: measured on the densest shape known (68x its DER
    size in RSS) and on a usual GID. Python heap only (cryptography's parsed names live there); if a new
    cryptography holds more, this fails and RECENT_BYTES_FACTOR / RECENT_ENTRY_OVERHEAD need measuring again."""
    if kind == "densest":
        der = densest_certificate(1500)
    else:
        key = new_private_key()
        der = create_gid(PEER, key.public_key(), key).certificate.public_bytes(serialization.Encoding.DER)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        gid = gid_from_certificate(x509.load_der_x509_certificate(der), der)
        # Everything a verification may compute and keep on a certificate.
        kept = (gid.fingerprint, gid.subject_cn, gid.public_key_der, gid.key_id, gid.key_bits, gid.not_before)
        kept += (gid.not_after, gid.pem(), gid.certificate.issuer, gid.certificate.subject, gid.certificate.extensions)
        del kept
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gid.der is der
    assert after - before <= gid_module.recent_cost(len(der)), (len(der), after - before)


def test_a_certificate_whose_estimate_is_large_is_parsed_but_not_kept(empty_caches: None) -> None:
    der = densest_certificate(300)
    assert gid_module.recent_cost(len(der)) > gid_module.RECENT_CACHE_BYTES // gid_module.RECENT_LARGEST_SHARE
    assert len(der) <= gid_module.MAX_CACHED_BYTES
    first = gid_from_der(der)
    assert gid_from_der(der) is not first and gid_module.PARSED.sizes().recent == 0


@dataclass(frozen=True)
class Federation:
    root: Gid
    roots: TrustedRoots
    ann: GidChain
    bob: GidChain


@pytest.fixture(scope="module")
def federation() -> Federation:
    key = new_private_key()
    root = create_gid("urn:publicid:IDN+tb+authority+sa", key.public_key(), key)
    users = []
    for name in ("ann", "bob"):
        user_key = new_private_key()
        users.append(
            issue_chain(
                create_gid(f"urn:publicid:IDN+tb+user+{name}", user_key.public_key(), key, issuer=root), (root,)
            )
        )
    return Federation(root, TrustedRoots((root,)), users[0], users[1])


def call(text: bytes, roots: TrustedRoots) -> None:
    """What the server does with a chain text a credential carries: read it, then verify the chain (every variant
    below verifies: SFA stops at the first certificate the root signed)."""
    verify_chain(load_gid_chain(text), roots, utcnow())


def variants(text: bytes, count: int) -> list[bytes]:
    """Texts of the same certificates that anyone can write: whitespace or junk between the PEM blocks (20 KB each;
    two thirds whitespace, over 4 MiB by themselves), or the certificates repeated."""
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end for block in text.split(end)[:-1]]
    made = []
    for number in range(count):
        filler = b"%06d" % number + b"x" * 20_000 if number % 3 == 0 else b"\n" * (20_000 + number)
        made.append(filler.join(blocks))
    made += [b"".join(blocks * repeat) for repeat in range(2, 9)] + [b"".join(blocks[::-1]), blocks[-1] * 3]
    return made


def test_variants_of_a_trusted_chain_text_do_not_push_out_trusted_callers_texts(
    federation: Federation, empty_caches: None
) -> None:
    ann_text, bob_text = (chain_pem(chain).encode("ascii") for chain in (federation.ann, federation.bob))
    for _ in range(2):  # bob calls twice: his text is kept from then on
        call(bob_text, federation.roots)
    kept = gid_module.PARSED.chain(bob_text)
    assert kept is not None and [gid.urn for gid in kept] == [gid.urn for gid in federation.bob]
    # Anyone can send ann's (public) certificates wrapped in other text: 6.6 MB of it, over the 4 MiB of chain texts.
    for text in variants(ann_text, 330):
        for _ in range(2):
            call(text, federation.roots)
    assert gid_module.PARSED.chain(bob_text) is kept
    sizes = gid_module.PARSED.sizes()
    assert sizes.chains <= 3 and sizes.chain_bytes <= 3 * (24_000 + gid_module.CHAIN_ENTRY_OVERHEAD), sizes
    # ann's own text is kept again from her next call.
    for _ in range(2):
        call(ann_text, federation.roots)
    assert gid_module.PARSED.chain(ann_text) is not None
    assert gid_module.PARSED.chain(bob_text) is kept


def test_a_chain_text_read_before_its_chain_is_verified_is_kept_pending_within_its_budget(
    federation: Federation, empty_caches: None
) -> None:
    """A credential's chains are read before they are verified: the text is kept pending (its certificates' DER
    bytes, no parsed certificate), becomes the chain's text at its next read once verified, and pending texts of
    chains nobody verifies stay within PENDING_CACHE_BYTES."""
    text = chain_pem(federation.ann).encode("ascii")
    verify_chain(load_gid_chain(text), federation.roots, utcnow())
    assert (gid_module.PARSED.sizes().chains, gid_module.PARSED.sizes().pending) == (0, 1)
    kept = load_gid_chain(text)
    assert gid_module.PARSED.chain(text) is kept
    assert (gid_module.PARSED.sizes().chains, gid_module.PARSED.sizes().pending) == (1, 0)
    untrusted = [
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in tiny_certificates(400)
    ]
    for pem in untrusted:  # 400 texts of chains nobody verifies: more than the pending budget holds
        load_gid_chain(pem)
    sizes = gid_module.PARSED.sizes()
    assert 0 < sizes.pending < len(untrusted) and sizes.pending_bytes <= gid_module.PENDING_CACHE_BYTES, sizes
    assert gid_module.PARSED.pending_chain(untrusted[-1]) is not None  # the latest are kept
    assert gid_module.PARSED.chain(text) is kept
