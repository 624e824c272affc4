"""The direct signature check (lxml's C14N, hashlib, cryptography's RSA) agrees with libxmlsec1, and only ever
accepts: every shape it does not handle, and every signature it cannot accept, is judged by libxmlsec1.

Each document below is signed by libxmlsec1 (xmldsig.sign, as sfa-omf signs credentials), then checked both ways;
a copy with one character of the signed element changed must be refused both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from lxml import etree

from sfa_omf.trust import xmldsig
from sfa_omf.trust.credential import XML_ID, _signature_template
from sfa_omf.trust.gid import der_of_base64, gid_from_der
from sfa_omf.trust.pki import new_private_key
from tests.conftest import VECTORS

DS = f"{{{xmldsig.DSIG_NS}}}"
PARSER = etree.XMLParser(resolve_entities=False, no_network=True)

KEY = new_private_key()
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
SPKI = KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

# Each signs the element with xml:id "t"; the Signature goes into the element with xml:id "home" unless said.
DOCUMENTS = {
    "plain": '<r><t xml:id="t">text</t><home xml:id="home"/></r>',
    "default namespace above": (
        '<r xmlns="urn:a"><t xml:id="t"><c>x</c><d xmlns="">y<e/></d></t><home xml:id="home" xmlns=""/></r>'
    ),
    "namespaces in scope, used and unused": (
        '<r xmlns:u="urn:unused" xmlns:p="urn:p"><m xmlns:q="urn:q"><t xml:id="t" p:a="1"><p:c q:b="2"/>'
        '</t></m><home xml:id="home"/></r>'
    ),
    "xml:lang and xml:space inherited": (
        '<r xml:lang="fr"><m xml:space="preserve" xml:lang="de"><t xml:id="t"> a <u xml:lang="en"/></t></m>'
        '<home xml:id="home"/></r>'
    ),
    "comments, PIs, CDATA, escapes, non-ASCII": (
        '<r><t xml:id="t" b="2" a="&lt;&amp;&quot;&#10;"><!-- a comment --><?pi data?><![CDATA[<x>]]>'
        '\u00e9t\u00e9&#x9;&gt;<z/>tail</t><home xml:id="home"/></r>'
    ),
    "namespace redeclared below": (
        '<r xmlns:p="urn:p"><t xml:id="t" xmlns:p="urn:p"><p:c xmlns:p="urn:q"><p:d/></p:c></t>'
        '<home xml:id="home"/></r>'
    ),
    "signature under the signed element's sibling, deep": (
        '<r><t xml:id="t"><a><b>deep</b></a></t><x><y><home xml:id="home"/></y></x></r>'
    ),
}


def _signed(document: str, holder_id: str = "home", target_id: str = "t") -> etree._Element:
    """The document with a Signature over #target_id appended to the element holder_id, signed by libxmlsec1;
    returned re-parsed (its xml:id values registered, as a verifier sees them)."""
    root = etree.fromstring(document.encode("utf-8"), PARSER)
    holder = root.xpath("//*[@xml:id=$i]", i=holder_id)[0]
    holder.append(_signature_template(target_id))
    root = etree.fromstring(etree.tostring(root), PARSER)
    signature = next(root.iter(f"{DS}Signature"))
    xmldsig.sign(signature, KEY_PEM)
    return etree.fromstring(etree.tostring(root), PARSER)


def _libxmlsec1_accepts(signature: etree._Element) -> bool:
    try:
        xmldsig.verify_with_libxmlsec1(signature, SPKI)
    except xmldsig.SignatureInvalid:
        return False
    return True


def _tampered(root: etree._Element) -> etree._Element:
    """A copy whose signed element's first text (or that of its first descendant with text) differs by one char."""
    copy = etree.fromstring(etree.tostring(root), PARSER)
    target = copy.xpath("//*[@xml:id='t']")[0]
    for element in target.iter(etree.Element):  # elements only: comments are not signed
        if element.text and element.text.strip():
            element.text = element.text.replace(element.text.strip()[0], "#", 1)
            return etree.fromstring(etree.tostring(copy), PARSER)
    target.set("tampered", "1")
    return etree.fromstring(etree.tostring(copy), PARSER)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_direct_check_accepts_what_libxmlsec1_signed_and_refuses_a_change(name: str) -> None:
    root = _signed(DOCUMENTS[name])
    signature = next(root.iter(f"{DS}Signature"))
    assert _libxmlsec1_accepts(signature)
    assert xmldsig._direct_verdict(signature, SPKI) is True
    xmldsig.verify(signature, SPKI)

    bad = next(_tampered(root).iter(f"{DS}Signature"))
    assert not _libxmlsec1_accepts(bad)
    assert xmldsig._direct_verdict(bad, SPKI) is False
    with pytest.raises(xmldsig.SignatureInvalid):
        xmldsig.verify(bad, SPKI)


def test_an_inherited_attribute_removed_after_signing_is_refused_both_ways() -> None:
    """C14N 1.0 carries xml:* attributes of the ancestors into the signed element: the direct check counts them."""
    root = _signed(DOCUMENTS["xml:lang and xml:space inherited"])
    middle = root.find("m")
    assert middle is not None
    del middle.attrib["{http://www.w3.org/XML/1998/namespace}lang"]
    signature = next(root.iter(f"{DS}Signature"))
    assert not _libxmlsec1_accepts(signature)
    assert xmldsig._direct_verdict(signature, SPKI) is False


def test_a_signature_inside_the_signed_element_goes_to_libxmlsec1() -> None:
    """The enveloped transform really removes something here: a shape the direct check leaves to libxmlsec1."""
    root = _signed('<r><t xml:id="t">text<home xml:id="home"/></t></r>')
    signature = next(root.iter(f"{DS}Signature"))
    assert xmldsig._direct_verdict(signature, SPKI) is False
    assert _libxmlsec1_accepts(signature)
    xmldsig.verify(signature, SPKI)  # accepted, by libxmlsec1


def test_a_reference_listing_two_ids_is_not_resolved_as_one_of_them() -> None:
    """XPath's id() splits a name at blanks: "#t home" must not find the element "t" (libxmlsec1 finds none)."""
    root = _signed(DOCUMENTS["plain"])
    reference = root.find(f".//{DS}Reference")
    assert reference is not None
    reference.set("URI", "#t home")
    signature = next(root.iter(f"{DS}Signature"))
    assert xmldsig._direct_verdict(signature, SPKI) is False
    with pytest.raises(xmldsig.SignatureInvalid):
        xmldsig.verify(signature, SPKI)


def test_another_key_is_refused_both_ways() -> None:
    other = new_private_key().public_key()
    other_spki = other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = next(_signed(DOCUMENTS["plain"]).iter(f"{DS}Signature"))
    assert xmldsig._direct_verdict(signature, other_spki) is False
    with pytest.raises(xmldsig.SignatureInvalid):
        xmldsig.verify(signature, other_spki)


@pytest.mark.interop
@pytest.mark.parametrize("federation", ["sfa", "gcf"])
def test_real_sfa_and_gcf_credentials_are_checked_without_libxmlsec1(
    federation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every signature of the real SFA and geni-tools credentials (RSA-SHA1, C14N 1.0, enveloped) is accepted by the
    direct check alone; only the tampered ones reach libxmlsec1 (refused here, as libxmlsec1 refuses them)."""
    asked: list[str] = []

    def libxmlsec1(signature: etree._Element, subject_public_key_info: bytes) -> None:
        asked.append(str(signature.get(XML_ID)))
        raise xmldsig.SignatureInvalid("libxmlsec1 is not asked in this test")

    monkeypatch.setattr(xmldsig, "verify_with_libxmlsec1", libxmlsec1)
    accepted = tampered = 0
    for path in sorted((Path(VECTORS) / federation / "creds").glob("*.cred")):
        root = etree.parse(str(path), PARSER).getroot()
        for signature in root.iter(f"{DS}Signature"):
            certificate = signature.findtext(f"{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate") or ""
            spki = gid_from_der(der_of_base64(certificate)).public_key_der
            if "tampered" in path.name:
                tampered += 1
                with pytest.raises(xmldsig.SignatureInvalid):
                    xmldsig.verify(signature, spki)
            else:
                xmldsig.verify(signature, spki)
                accepted += 1
    assert accepted >= 10
    assert len(asked) == tampered


def _moved_first(root: etree._Element, tag: str) -> etree._Element:
    """A copy whose Signature has its child ``tag`` (or a new foreign element, for "junk") moved to the front."""
    copy = etree.fromstring(etree.tostring(root), PARSER)
    signature = next(copy.iter(f"{DS}Signature"))
    moved = signature.find(f"{DS}{tag}") if tag != "junk" else etree.Element("{urn:other}junk")
    assert moved is not None
    signature.insert(0, moved)
    return etree.fromstring(etree.tostring(copy), PARSER)


@pytest.mark.parametrize("first", ["SignatureValue", "KeyInfo", "junk"])
def test_a_signature_out_of_the_schemas_order_is_never_accepted_directly(first: str) -> None:
    """libxmlsec1 refuses a Signature whose children are out of order or unknown: so must the direct check (it
    accepted them, as it looked for each child anywhere)."""
    root = _signed(DOCUMENTS["plain"])
    signature = next(root.iter(f"{DS}Signature"))
    etree.SubElement(signature, f"{DS}KeyInfo")
    shuffled = next(_moved_first(root, first).iter(f"{DS}Signature"))
    assert not _libxmlsec1_accepts(shuffled)
    assert xmldsig._direct_verdict(shuffled, SPKI) is False
    with pytest.raises(xmldsig.SignatureInvalid):
        xmldsig.verify(shuffled, SPKI)


@pytest.mark.parametrize("blank", ["\u00a0", "\u2028", "\u0085", "\u3000"])
def test_only_xml_whitespace_is_skipped_in_a_signature_value(blank: str) -> None:
    """libxmlsec1 skips space, tab, CR and LF in base64, not the other Unicode blanks str.split() skips."""
    root = _signed(DOCUMENTS["plain"])
    value = root.find(f".//{DS}SignatureValue")
    assert value is not None and value.text
    value.text = value.text[:8] + blank + value.text[8:]
    signature = next(root.iter(f"{DS}Signature"))
    assert not _libxmlsec1_accepts(signature)
    assert xmldsig._direct_verdict(signature, SPKI) is False
    value.text = value.text.replace(blank, "\r\n\t ")
    assert xmldsig._direct_verdict(signature, SPKI) is True
