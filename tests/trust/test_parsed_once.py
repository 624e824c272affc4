"""Each distinct certificate parsed once, each distinct link's signature checked once, each signer key loaded once
(issue 15) — and none of it weakens a check: the caches are keyed by exact bytes, keep only successes, and validity,
impostors and tampering are judged on every verification."""

from __future__ import annotations

import base64
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.hashes import SHA256

from sfa_omf.errors import BadArgs, Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust import roots as roots_module
from sfa_omf.trust.gid import Gid, chain_pem, gid_from_der, load_gid_chain
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.roots import TrustedRoots, verify_chain
from sfa_omf.trust.verifier import CredentialVerifier, forget_certificates
from tests.conftest import DemoPki

KEYS: dict[str, rsa.RSAPrivateKey] = {}


def key(name: str) -> rsa.RSAPrivateKey:
    if name not in KEYS:
        KEYS[name] = new_private_key()
    return KEYS[name]


@pytest.fixture(scope="module")
def tree() -> dict[str, Gid]:
    top = create_gid("urn:publicid:IDN+fed+authority+sa", key("fed").public_key(), key("fed"))
    ann = create_gid("urn:publicid:IDN+fed+user+ann", key("ann").public_key(), key("fed"), issuer=top)
    # Same subject, same issuer name, signed by a key that is not fed's: a forgery of ann's certificate.
    forged = create_gid("urn:publicid:IDN+fed+user+ann", key("ann").public_key(), key("mallory"), issuer=top)
    short = create_gid(
        "urn:publicid:IDN+fed+user+bea", key("bea").public_key(), key("fed"), issuer=top, lifetime=timedelta(days=1)
    )
    return {"fed": top, "ann": ann, "forged": forged, "short": short}


def test_the_same_bytes_give_the_same_gids_and_other_bytes_their_own(tree: dict[str, Gid]) -> None:
    pem = chain_pem((tree["ann"], tree["fed"]))
    first = load_gid_chain(pem)
    again = load_gid_chain(pem.encode("ascii"))  # str or bytes: the same certificates, parsed once
    assert len(again) == 2 and all(one is other for one, other in zip(again, first, strict=True))
    assert first[0].urn == "urn:publicid:IDN+fed+user+ann" and first[0].hrn == "fed.ann"
    other = load_gid_chain(chain_pem((tree["forged"], tree["fed"])))
    assert other[0] is not first[0] and other[0].fingerprint != first[0].fingerprint
    der = tree["ann"].certificate.public_bytes(serialization.Encoding.DER)
    assert gid_from_der(der) is gid_from_der(bytes(der)) and gid_from_der(der).fingerprint == first[0].fingerprint
    # Hashed from the bytes read or from a re-encoding, the fingerprint is cryptography's SHA-256 fingerprint.
    assert first[0].fingerprint == tree["ann"].fingerprint == tree["ann"].certificate.fingerprint(SHA256()).hex()
    assert first[0].der == der and tree["ann"].der is None
    assert (first[0].type, first[0].hrn, first[0].hrn_parts) == ("user", "fed.ann", ("fed", "ann"))


def test_unreadable_certificates_are_refused_every_time() -> None:
    for _ in range(2):  # a refusal is not cached into an answer
        with pytest.raises(BadArgs):
            load_gid_chain("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
        with pytest.raises(BadArgs, match="not ASCII"):
            load_gid_chain("-----BEGIN CERTIFICATE-----\né\n-----END CERTIFICATE-----\n")
        with pytest.raises(ValueError):
            gid_from_der(b"\x30\x03\x02\x01\x00")


def test_a_verified_link_does_not_vouch_for_a_forgery_of_it(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    now = utcnow()
    assert verify_chain((tree["ann"],), roots, now) == tree["fed"]  # the genuine link is now remembered
    for _ in range(2):
        with pytest.raises(TrustError) as refusal:
            verify_chain((tree["forged"],), roots, now, role="caller")
        assert refusal.value.reason == Reason.UNTRUSTED_CHAIN and "whose key does not" in refusal.value.message
    assert (tree["forged"].fingerprint, tree["fed"].fingerprint) not in roots_module._VERIFIED_LINKS
    assert (tree["ann"].fingerprint, tree["fed"].fingerprint) in roots_module._VERIFIED_LINKS


def test_validity_is_judged_on_every_check_whatever_was_remembered(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    now = utcnow()
    assert verify_chain((tree["short"],), roots, now) == tree["fed"]
    with pytest.raises(TrustError) as refusal:
        verify_chain((tree["short"],), roots, now + timedelta(days=2))
    assert refusal.value.reason == Reason.CERTIFICATE_EXPIRED
    # Another set of roots does not trust what fed signed, remembered link or not.
    with pytest.raises(TrustError) as untrusted:
        verify_chain((tree["short"],), TrustedRoots(anchors=(tree["ann"],)), now)
    assert untrusted.value.reason in (Reason.UNTRUSTED_CHAIN, Reason.INVALID_CHAIN)


def test_a_tampered_credential_is_refused_after_its_signer_key_was_loaded(pki: DemoPki) -> None:
    genuine = pki.users["alice"].slice_cred
    verifier = CredentialVerifier(pki.roots)  # no verdict cache: every signature is checked
    now = utcnow()
    verifier.verify(genuine, now)
    year = re.search(r"<expires>(\d{4})", genuine)
    assert year is not None
    tampered = genuine[: year.start(1)] + str(int(year.group(1)) + 1) + genuine[year.end(1) :]  # signed by the same key
    for _ in range(2):
        with pytest.raises(TrustError) as refusal:
            verifier.verify(tampered, now)
        assert refusal.value.reason == Reason.SIGNATURE
    forget_certificates()  # a first sight gives the same verdicts
    assert verifier.verify(genuine, now).owner_urn == pki.users["alice"].chain[0].urn
    with pytest.raises(TrustError) as again:
        verifier.verify(tampered, now)
    assert again.value.reason == Reason.SIGNATURE


def test_a_flood_of_begin_markers_is_refused_without_scanning_to_the_end_from_each() -> None:
    """4 MiB (the request limit) of BEGIN lines without an END: a lazy match from every BEGIN to the end of the input
    took minutes for a few hundred KiB (quadratic) and held the interpreter lock; it is refused at once now."""
    flood = b"-----BEGIN CERTIFICATE-----\n" * (4 * 1024 * 1024 // 28)
    with pytest.raises(BadArgs, match="no certificate in it"):
        load_gid_chain(flood)


def test_large_inputs_are_parsed_but_not_kept(tree: dict[str, Gid]) -> None:
    """The caches are keyed by the caller's bytes: a chain padded to megabytes is read, never kept."""
    from sfa_omf.trust import gid as gid_module

    forget_certificates()
    block = chain_pem((tree["ann"],)).strip()
    padded = (block + "\n" + " " * 40_000 + "\n") * 3  # three copies of ann's certificate, each block 40 KB
    chain = load_gid_chain(padded)
    assert [g.urn for g in chain] == [tree["ann"].urn] * 3
    # The 120 KB text is not a key; its one certificate, of a usual size, is kept among the recent ones (not verified).
    assert gid_module.PARSED.sizes() == (0, 1, gid_module.recent_cost(len(chain[0].der or b"")), 0, 0, 0, 0)
    assert load_gid_chain(block)[0] is chain[0]
    assert gid_module.PARSED.sizes().chains == 0  # a chain's text only once the chain is verified
    text = chain_pem((tree["ann"], tree["fed"]))
    verify_chain(load_gid_chain(text), TrustedRoots(anchors=(tree["fed"],)), utcnow())
    assert load_gid_chain(block)[0] is chain[0]
    assert gid_module.PARSED.sizes().chains == 0  # ann alone was not the chain verified
    kept = load_gid_chain(text)
    assert kept[0] is chain[0] and load_gid_chain(text) is kept
    assert gid_module.PARSED.sizes().chains == 1


def test_a_signer_key_libxmlsec1_cannot_use_is_a_signature_that_does_not_verify(pki: DemoPki) -> None:
    """The signature is checked with the signer certificate's bare public key: a certificate with a key of another
    algorithm (here Ed25519, in place of the authority's) is refused as SIGNATURE, never an exception."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = create_gid(
        "urn:publicid:IDN+testbed+authority+sa",
        ed25519.Ed25519PrivateKey.generate().public_key(),  # type: ignore[arg-type]
        key("fed"),
    )
    genuine = pki.users["alice"].slice_cred
    found = re.search(r"<X509Certificate>([^<]+)</X509Certificate>", genuine)
    assert found is not None
    swapped_der = base64.b64encode(other.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")
    swapped = genuine[: found.start(1)] + swapped_der + genuine[found.end(1) :]
    for _ in range(2):
        with pytest.raises(TrustError) as refusal:
            CredentialVerifier(pki.roots).verify(swapped, utcnow())
        assert refusal.value.reason == Reason.SIGNATURE and "not RSA" in refusal.value.message


def test_a_signer_certificate_whose_key_is_not_plain_rsa_is_refused_as_signature(pki: DemoPki, tmp_path: Path) -> None:
    """An RSASSA-PSS-only key (made by openssl), as the signer's: re-encoded for libxmlsec1 it would lose its
    restriction, so it is refused by its algorithm before any signature check, as SIGNATURE."""
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048", "-nodes", "-days", "1",
         "-subj", "/CN=pss", "-keyout", str(tmp_path / "pss.key"), "-out", str(tmp_path / "pss.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    pss = x509.load_pem_x509_certificate((tmp_path / "pss.pem").read_bytes())
    assert pss.public_key_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    genuine = pki.users["alice"].slice_cred
    found = re.search(r"<X509Certificate>([^<]+)</X509Certificate>", genuine)
    assert found is not None
    swapped_der = base64.b64encode(pss.public_bytes(serialization.Encoding.DER)).decode("ascii")
    swapped = genuine[: found.start(1)] + swapped_der + genuine[found.end(1) :]
    with pytest.raises(TrustError) as refusal:
        CredentialVerifier(pki.roots).verify(swapped, utcnow())
    assert refusal.value.reason == Reason.SIGNATURE
    assert "key of algorithm 1.2.840.113549.1.1.10, not RSA" in refusal.value.message
