"""A certificate whose public key the cryptography library cannot read (an algorithm it does not know) inside a
credential is a refusal of that credential, not an internal error of the call: the caller's other credentials are
still tried, and a call with that credential alone is answered with the trust layer's code and a message saying
which certificate and what to do (found by a hunt: a registered user delegating her own slice credential with such
a target certificate made the AM answer 5, SERVERERROR, and never try the next credential)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from lxml import etree

from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.errors import GeniCode, Reason, TrustError
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import XML_ID, delegate_credential, sign_document
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import aggregate_on
from tests.conftest import DemoPki

RSA_ENCRYPTION_OID = bytes.fromhex("06092a864886f70d010101")  # 1.2.840.113549.1.1.1, DER
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def _with_unknown_key_algorithm(pem: str) -> str:
    """The PEM's first certificate with its key's algorithm changed to 1.2.840.113549.1.1.99 (nobody's)."""
    first = PEM_BLOCK.search(pem)
    assert first is not None
    der = bytearray(base64.b64decode("".join(first.group(1).split())))
    at = der.find(RSA_ENCRYPTION_OID)  # the subject key's algorithm comes before any other use of the OID
    assert at > 0
    der[at + len(RSA_ENCRYPTION_OID) - 1] = 0x63
    block = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)).decode() + "-----END CERTIFICATE-----"
    return pem[: first.start()] + block + pem[first.end() :]


def _delegated_with_unreadable_target(pki: DemoPki) -> str:
    """alice delegates her slice credential to bob, with the target certificate's key made unreadable, signed again
    by alice (as any registered user can do with a credential of her own)."""
    alice, bob = pki.users["alice"], pki.users["bob"]
    child = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, privileges=("info",))
    root = etree.fromstring(child.encode())
    credential = root.find("credential")
    assert credential is not None
    target = credential.find("target_gid")
    assert target is not None and target.text
    target.text = _with_unknown_key_algorithm(target.text)
    signatures = root.find("signatures")
    assert signatures is not None
    for signature in list(signatures):
        if signature.get(XML_ID) == "Sig_" + credential.get(XML_ID, ""):
            signatures.remove(signature)
    return sign_document(root, credential.get(XML_ID, ""), alice.key, alice.chain)


def test_a_credential_with_an_unreadable_key_is_refused_and_the_next_one_tried(pki: DemoPki) -> None:
    bob = pki.users["bob"]
    crafted = _delegated_with_unreadable_target(pki)
    verifier = CredentialVerifier(pki.roots, VerdictCache())

    with pytest.raises(TrustError) as refused:
        verifier.check_call(bob.chain, [crafted], pki.slice_urn, "sliverstatus", utcnow())
    assert refused.value.reason == Reason.MALFORMED
    assert "urn:publicid:IDN+testbed+slice+demo holds a public key that cannot be read" in refused.value.message
    assert "RSA key" in refused.value.message

    allowed = verifier.check_call(bob.chain, [crafted, bob.slice_cred], pki.slice_urn, "sliverstatus", utcnow())
    assert allowed.owner_urn == bob.chain[0].urn


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_am_answers_such_a_credential_with_a_trust_code_not_an_internal_error(
    backend: str, tmp_path: Path, pki: DemoPki
) -> None:
    bob = pki.users["bob"]
    crafted = {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": _delegated_with_unreadable_target(pki)}
    good = {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": bob.slice_cred}
    context = CallContext(caller_chain=bob.chain, peer="127.0.0.1", path="/")
    with aggregate_on(backend, tmp_path, pki) as made:
        api = ApiV3(made)

        alone = api(context, "Status", ([pki.slice_urn], [crafted], {}))
        with_good = api(context, "Status", ([pki.slice_urn], [crafted, good], {}))

    assert alone["code"]["geni_code"] not in (GeniCode.SUCCESS, GeniCode.SERVERERROR)
    assert "holds a public key that cannot be read" in alone["output"]
    assert with_good["code"]["geni_code"] == GeniCode.SUCCESS, with_good["output"]
