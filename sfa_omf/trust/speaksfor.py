"""GENI speaks-for: a tool (a portal) calls on behalf of a user, with the user's signed statement that the tool's key
speaks for the user's key.

The call carries the option ``geni_speaking_for`` = the user's URN and a credential of geni_type ``geni_abac``:
an ABAC statement ``<user keyid>.speaks_for_<user keyid> <- <tool keyid>``, signed by the user. It is accepted when
it is not expired, its one signature verifies (same anti-wrapping rules as privilege credentials), the signer chains
to a trusted root, the signer's URN is the option's, the head key id is the signer's key and the tail key id is the
key of the TLS caller. The user then becomes the effective caller; nothing else in authorization changes.

Key ids are the SHA-1 of the subject public key (RFC 5280's subjectKeyIdentifier, method 1), in lower-case hex.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from sfa_omf.errors import BadArgs, Reason, TrustError
from sfa_omf.times import format_time, parse_time
from sfa_omf.trust import xmldsig
from sfa_omf.trust.credential import (
    XML_ID,
    new_document_root,
    refuse_id_confusion,
    sign_document,
)
from sfa_omf.trust.gid import Gid, GidChain
from sfa_omf.trust.roots import TrustedRoots, verify_chain
from sfa_omf.trust.verifier import signature_reference, verify_signature_element
from sfa_omf.xmlsafe import UnsafeXml, XmlLimits, parse_untrusted
from sfa_omf.xrn import parse_urn

ABAC_LIMITS = XmlLimits(max_bytes=256 * 1024, max_depth=16, max_attributes=256, max_namespace_declarations=32)


def key_id(gid: Gid) -> str:
    """SHA-1 of the subjectPublicKey bits (what subjectKeyIdentifier holds, RFC 5280 method 1), lower-case hex."""
    return x509.SubjectKeyIdentifier.from_public_key(gid.certificate.public_key()).digest.hex()


def _text(element: etree._Element, path: str) -> str:
    found = element.findall(path)
    if len(found) != 1:
        raise TrustError(Reason.MALFORMED, f"speaks-for credential: expected exactly one <{path}>")
    return (found[0].text or "").strip()


def verify_speaks_for(
    tool_chain: GidChain, abac_credentials: Sequence[str], user_urn: str, roots: TrustedRoots, at: datetime
) -> GidChain:
    """The user's chain when one of the credentials lets the tool speak for ``user_urn``; TrustError otherwise."""
    if not abac_credentials:
        raise TrustError(
            Reason.NO_CREDENTIAL,
            f"geni_speaking_for names {user_urn} but the call carries no geni_abac speaks-for credential",
        )
    refusals: list[TrustError] = []
    for document in abac_credentials:
        try:
            return _verify_one(tool_chain, document, user_urn, roots, at)
        except TrustError as exc:
            refusals.append(exc)
    raise refusals[0]


def _verify_one(tool_chain: GidChain, document: str, user_urn: str, roots: TrustedRoots, at: datetime) -> GidChain:
    try:
        root = parse_untrusted(document, ABAC_LIMITS, what="speaks-for credential")
    except UnsafeXml as exc:
        raise TrustError(Reason.HOSTILE_XML, str(exc)) from exc
    except etree.XMLSyntaxError as exc:
        raise TrustError(Reason.MALFORMED, f"speaks-for credential is not well-formed XML: {exc}") from exc
    if root.tag != "signed-credential":
        raise TrustError(Reason.MALFORMED, f"expected a <signed-credential>, found <{root.tag}>")
    refuse_id_confusion(root)
    credentials = root.findall("credential")
    if len(credentials) != 1 or not credentials[0].get(XML_ID):
        raise TrustError(Reason.MALFORMED, "a speaks-for credential holds exactly one <credential> with an xml:id")
    credential = credentials[0]
    if _text(credential, "type") != "abac":
        raise TrustError(Reason.MALFORMED, "a speaks-for credential has <type>abac</type>")
    signatures = root.findall(f"signatures/{{{xmldsig.DSIG_NS}}}Signature")
    if len(signatures) != 1 or signature_reference(signatures[0]) != credential.get(XML_ID):
        raise TrustError(Reason.SIGNATURE, "a speaks-for credential carries exactly one signature, over its credential")
    signer_chain = verify_signature_element(signatures[0], str(credential.get(XML_ID)))
    verify_chain(signer_chain, roots, at, role="speaks-for signer")
    signer = signer_chain[0]
    if not signer.urn or parse_urn(signer.urn) != parse_urn(user_urn):
        raise TrustError(
            Reason.OWNER_MISMATCH, f"the speaks-for credential is signed by {signer.urn}, not by {user_urn}"
        )
    try:
        expires = parse_time(_text(credential, "expires"))
    except BadArgs as exc:
        raise TrustError(Reason.MALFORMED, "speaks-for credential: unreadable <expires>") from exc
    if at >= expires:
        raise TrustError(
            Reason.CREDENTIAL_EXPIRED,
            f"the speaks-for credential expired at {format_time(expires)}; ask the user again",
        )
    head = _text(credential, "abac/rt0/head/ABACprincipal/keyid").lower()
    role = _text(credential, "abac/rt0/head/role")
    tail = _text(credential, "abac/rt0/tail/ABACprincipal/keyid").lower()
    if head != key_id(signer) or role != f"speaks_for_{head}":
        raise TrustError(
            Reason.OWNER_MISMATCH, "the speaks-for statement is not about the key of the user who signed it"
        )
    if tail != key_id(tool_chain[0]):
        raise TrustError(
            Reason.OWNER_MISMATCH, "the speaks-for credential lets another key speak for the user, not the caller's"
        )
    return signer_chain


def issue_speaks_for(user_key: rsa.RSAPrivateKey, user_chain: GidChain, tool: Gid, expires: datetime) -> str:
    """The user's statement that ``tool`` speaks for them (what a portal asks its users to sign)."""
    user_id, tool_id = key_id(user_chain[0]), key_id(tool)
    root = new_document_root()
    credential = etree.SubElement(root, "credential")
    credential.set(XML_ID, "ref0")
    etree.SubElement(credential, "type").text = "abac"
    etree.SubElement(credential, "serial")
    etree.SubElement(credential, "owner_gid")
    etree.SubElement(credential, "target_gid")
    etree.SubElement(credential, "uuid")
    etree.SubElement(credential, "expires").text = format_time(expires)
    statement = etree.SubElement(etree.SubElement(credential, "abac"), "rt0")
    etree.SubElement(statement, "version").text = "1.1"
    head = etree.SubElement(statement, "head")
    principal = etree.SubElement(head, "ABACprincipal")
    etree.SubElement(principal, "keyid").text = user_id
    etree.SubElement(principal, "mnemonic").text = user_chain[0].urn or ""
    etree.SubElement(head, "role").text = f"speaks_for_{user_id}"
    tail = etree.SubElement(etree.SubElement(statement, "tail"), "ABACprincipal")
    etree.SubElement(tail, "keyid").text = tool_id
    etree.SubElement(tail, "mnemonic").text = tool.urn or ""
    return sign_document(root, "ref0", user_key, user_chain)
