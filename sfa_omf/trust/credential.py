"""SFA/GENI privilege credentials: reading the XML into plain data, signing, delegating.

The document (what SFA and gcf write, and what we write):

    <signed-credential xmlns:xsi=...>
      <credential xml:id="ref1"> type, serial, owner_gid, owner_urn, target_gid, target_urn, uuid, expires,
        privileges, <parent><credential xml:id="ref0"> ...the delegating credential... </credential></parent>
      </credential>
      <signatures> <Signature xml:id="Sig_ref0"> ... Reference URI="#ref0" ... </Signature> ... </signatures>
    </signed-credential>

Reading checks the shape strictly (one credential per level, unique xml:id values, no other ID-like attributes) so
that the element we read is the element a signature covers: the verifier (verifier.py) relies on it.
Signing uses the ``xmlsec`` binding in-process, never a subprocess.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from sfa_omf.errors import BadArgs, Reason, TrustError
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust import xmldsig
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain
from sfa_omf.xmlsafe import UnsafeXml, XmlLimits, parse_untrusted
from sfa_omf.xrn import Urn, is_urn, parse_urn, urn_character_problem

DSIG_NS = xmldsig.DSIG_NS
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_ROOT_ATTRIBUTES = {
    f"{{{XSI_NS}}}noNamespaceSchemaLocation": "http://www.planet-lab.org/resources/sfa/credential.xsd",
    f"{{{XSI_NS}}}schemaLocation": "http://www.planet-lab.org/resources/sfa/ext/policy/1 "
    "http://www.planet-lab.org/resources/sfa/ext/policy/1/policy.xsd",
}
#: Credentials are small (a few certificates per delegation level); a megabyte is far beyond any real one. A real
#: one has about ten attributes and two namespace declarations per delegation level (MAX_DELEGATION_DEPTH of 8).
CREDENTIAL_LIMITS = XmlLimits(max_bytes=1024 * 1024, max_depth=32, max_attributes=1024, max_namespace_declarations=128)
MAX_DELEGATION_DEPTH = 8
_REPEATED_ID = re.compile(r"ID (\S+) already defined")


@dataclass(frozen=True)
class Privilege:
    name: str
    can_delegate: bool


@dataclass(frozen=True)
class Credential:
    """One <credential> element as plain data; ``parent`` is the credential it was delegated from."""

    xml_id: str
    type: str
    serial: str
    owner_urn: str
    owner_chain: GidChain = field(repr=False)
    target_urn: str
    target_chain: GidChain = field(repr=False)
    expires: datetime
    privileges: tuple[Privilege, ...]
    parent: Credential | None = None

    @property
    def privilege_names(self) -> tuple[str, ...]:
        return tuple(privilege.name for privilege in self.privileges)

    @property
    def lineage(self) -> tuple[Credential, ...]:
        """This credential, then its parent, up to the root credential an authority issued."""
        chain: list[Credential] = []
        current: Credential | None = self
        while current is not None:
            chain.append(current)
            current = current.parent
        return tuple(chain)

    @property
    def depth(self) -> int:
        return len(self.lineage) - 1


@dataclass(frozen=True)
class CredentialDocument:
    """A parsed credential: its plain data and the parsed tree the signatures are checked on."""

    credential: Credential
    root: etree._Element = field(repr=False)


def _malformed(message: str) -> TrustError:
    return TrustError(Reason.MALFORMED, message)


def _only_child(element: etree._Element, tag: str, where: str, required: bool = True) -> etree._Element | None:
    found = [child for child in element if child.tag == tag]
    if len(found) > 1:
        raise _malformed(f"{where} has {len(found)} <{tag}> elements; exactly one is allowed")
    if not found:
        if required:
            raise _malformed(f"{where} has no <{tag}> element")
        return None
    return found[0]


def _text(element: etree._Element, tag: str, where: str, required: bool = True) -> str:
    child = _only_child(element, tag, where, required)
    return (child.text or "").strip() if child is not None else ""


def read_credential(data: bytes | str) -> CredentialDocument:
    """Parse credential XML into plain data. Raise TrustError (MALFORMED or HOSTILE_XML) saying what is wrong."""
    try:
        root = parse_untrusted(data, CREDENTIAL_LIMITS, what="credential")
    except UnsafeXml as exc:
        raise TrustError(Reason.HOSTILE_XML, str(exc)) from exc
    except etree.XMLSyntaxError as exc:
        repeated = _REPEATED_ID.search(str(exc))  # libxml2 itself refuses a repeated xml:id (DTD_ID_REDEFINED)
        if repeated:
            raise TrustError(
                Reason.SIGNATURE, f"xml:id {repeated.group(1)!r} appears twice: refused (ID confusion)"
            ) from exc
        raise _malformed(f"credential is not well-formed XML: {exc}") from exc
    if root.tag != "signed-credential":
        raise _malformed(f"expected a <signed-credential> document, found <{root.tag}>")
    refuse_id_confusion(root)
    top = _only_child(root, "credential", "<signed-credential>")
    assert top is not None
    credential = _read_credential_element(top, depth=0)
    return CredentialDocument(credential=credential, root=root)


#: Every attribute of the document, each with its name (``attrname``) and element (``getparent()``): one XPath pass
#: in C instead of a Python loop over every element.
_ALL_ATTRIBUTES = etree.XPath("//@*")


def refuse_id_confusion(root: etree._Element) -> None:
    """Refuse documents where an ID could point at two things (the basis of signature-wrapping attacks)."""
    seen: set[str] = set()
    attributes = cast("list[Any]", _ALL_ATTRIBUTES(root))  # "//@*" gives lxml's smart strings, untyped in the stubs
    for value in attributes:
        name = value.attrname
        if name == XML_ID:
            text = str(value)
            if text in seen:
                raise TrustError(Reason.SIGNATURE, f"xml:id {text!r} appears twice: refused (ID confusion)")
            seen.add(text)
        elif etree.QName(name).localname.lower() == "id":
            raise TrustError(
                Reason.SIGNATURE,
                f"attribute {etree.QName(name).localname!r} on <{etree.QName(value.getparent()).localname}>: "
                "credentials use xml:id only (ID confusion refused)",
            )


def _read_credential_element(element: etree._Element, depth: int) -> Credential:
    if depth > MAX_DELEGATION_DEPTH:
        raise _malformed(f"credential is delegated more than {MAX_DELEGATION_DEPTH} times")
    xml_id = element.get(XML_ID)
    if not xml_id:
        raise _malformed("a <credential> has no xml:id, so no signature can refer to it")
    where = f"credential {xml_id!r}"
    type_ = _text(element, "type", where)
    if type_ != "privilege":
        raise _malformed(
            f"{where} is of type {type_!r}; only privilege credentials are accepted here "
            "(geni_abac speaks-for credentials are checked separately)"
        )
    owner_chain = _read_chain(element, "owner_gid", where)
    target_chain = _read_chain(element, "target_gid", where)
    owner_urn = _named_urn(element, "owner", owner_chain[0], where)
    target_urn = _named_urn(element, "target", target_chain[0], where)
    expires_text = _text(element, "expires", where)
    try:
        expires = parse_time(expires_text)
    except BadArgs as exc:
        raise _malformed(f"{where}: cannot read <expires> {expires_text!r}") from exc
    privileges = _read_privileges(element, where)
    parent_element = _only_child(element, "parent", where, required=False)
    parent = None
    if parent_element is not None:
        inner = _only_child(parent_element, "credential", f"<parent> of {where}")
        assert inner is not None
        parent = _read_credential_element(inner, depth + 1)
    return Credential(
        xml_id=xml_id,
        type=type_,
        serial=_text(element, "serial", where, required=False),
        owner_urn=owner_urn,
        owner_chain=owner_chain,
        target_urn=target_urn,
        target_chain=target_chain,
        expires=expires,
        privileges=privileges,
        parent=parent,
    )


def same_urn(left: str, right: str) -> bool:
    """URNs are equal when prefix and type match case-insensitively and authority and name match exactly; text
    that is no URN is equal only to the same text. A URN-like text that does not parse is refused (MALFORMED)."""
    if not (is_urn(left) and is_urn(right)):
        return left == right
    return _parsed_urn(left, "a URN") == _parsed_urn(right, "a URN")


def _parsed_urn(text: str, what: str) -> Urn:
    try:
        return parse_urn(text)
    except BadArgs as exc:
        raise _malformed(f"{what} does not parse: {exc.message}") from exc


def _named_urn(element: etree._Element, role: str, gid: Gid, where: str) -> str:
    """The <owner_urn> or <target_urn> of a credential, checked against its GID: the naming rules (chains, issuer)
    are judged on the GID, and authorize compares the URN, so both must name the same thing.

    A GID with a URN: the text is empty (the GID's URN is used) or the same URN. A GID without one (SFA's old form,
    the HRN only in its CN): the text is empty or a URN whose HRN is that CN. The owner's URN is returned in its
    canonical form (str(parse_urn(...))), the name its logins and leases are kept under.
    """
    text = _text(element, f"{role}_urn", where, required=False)
    try:
        gid_parts = gid.hrn_parts  # parses the GID's URN, or splits its CN (once per certificate: cached)
    except BadArgs as exc:
        raise _malformed(
            f"{where}: the {role}_gid names {gid.urn or gid.subject_cn!r}, which does not parse: {exc.message}"
        ) from exc
    if not text or text == gid.urn:  # the usual case, without parsing the text again (the GID's URN is checked)
        if role == "owner" and gid.parsed_urn is not None:
            # The canonical form (prefix and type in lower case): the owner's name keys logins and leases.
            return str(gid.parsed_urn)
        return gid.urn or ""
    # The text becomes the owner's or target's name (a lease's owner), as a certificate's URN does: the same rule.
    problem = urn_character_problem(text)
    if problem is not None:
        raise _malformed(
            f"{where}: {role}_urn {text!r} refused: {problem}; the authority that issued the credential must issue "
            "one without it"
        )
    written = _parsed_urn(text, f"{where}: {role}_urn {text!r}")
    if gid.parsed_urn is not None:
        if written != gid.parsed_urn:
            raise _malformed(f"{where}: {role}_urn {text} differs from the URN in {role}_gid {gid.urn}")
    elif written.hrn_parts != gid_parts:
        raise _malformed(
            f"{where}: {role}_urn {text} names {written.hrn!r}, but {role}_gid names {gid.subject_cn!r} (its CN; "
            "it carries no URN): a credential's URN must name the certificate it carries"
        )
    # The owner's name keys logins and leases: `URN:PUBLICID:IDN+tb+USER+alice` is alice, under her one spelling.
    # (A target is only compared, case-insensitively where URNs are: kept as written.)
    return str(written) if role == "owner" else text


def _read_chain(element: etree._Element, tag: str, where: str) -> GidChain:
    text = _text(element, tag, where)
    try:
        chain = load_gid_chain(text)
    except BadArgs as exc:
        raise _malformed(f"{where}: <{tag}> holds no readable certificate") from exc
    if not chain:
        raise _malformed(f"{where}: <{tag}> holds no certificate")
    return chain


def _read_privileges(element: etree._Element, where: str) -> tuple[Privilege, ...]:
    container = _only_child(element, "privileges", where)
    assert container is not None
    privileges = []
    for item in container:
        if item.tag != "privilege":
            continue
        name = _text(item, "name", f"a privilege of {where}")
        flag = _text(item, "can_delegate", f"privilege {name!r} of {where}", required=False).lower()
        if flag not in ("", "true", "false", "1", "0"):
            raise _malformed(f"{where}: can_delegate of {name!r} is {flag!r}, expected true or false")
        privileges.append(Privilege(name=name, can_delegate=flag in ("true", "1")))
    return tuple(privileges)


# ---------------------------------------------------------------------------------------------------------------
# Writing and signing


@dataclass(frozen=True)
class CredentialRequest:
    """What to put in a new credential (plain data in)."""

    owner_chain: GidChain
    target_chain: GidChain
    expires: datetime
    privileges: tuple[Privilege, ...]


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = text
    return child


def _credential_element(request: CredentialRequest, xml_id: str) -> etree._Element:
    element = etree.Element("credential")
    element.set(XML_ID, xml_id)
    _sub(element, "type", "privilege")
    _sub(element, "serial", str(secrets.randbelow(2**31)))
    _sub(element, "owner_gid", chain_pem(request.owner_chain))
    _sub(element, "owner_urn", request.owner_chain[0].urn or "")
    _sub(element, "target_gid", chain_pem(request.target_chain))
    _sub(element, "target_urn", request.target_chain[0].urn or "")
    _sub(element, "uuid")
    _sub(element, "expires", format_time(request.expires))
    privileges = _sub(element, "privileges")
    for privilege in request.privileges:
        item = _sub(privileges, "privilege")
        _sub(item, "name", privilege.name)
        _sub(item, "can_delegate", "true" if privilege.can_delegate else "false")
    return element


def new_document_root(template: etree._Element | None = None) -> etree._Element:
    # The same namespace context as SFA's documents: inclusive C14N of a signed parent credential includes the
    # namespaces in scope, so a delegated credential must keep the root's declarations exactly.
    nsmap = dict(template.nsmap) if template is not None else {"xsi": XSI_NS}
    root = etree.Element("signed-credential", nsmap=nsmap)  # type: ignore[arg-type]
    attributes: dict[str, str] = (
        {str(name): str(value) for name, value in template.attrib.items()} if template is not None else _ROOT_ATTRIBUTES
    )
    for name, value in attributes.items():
        root.set(name, value)
    return root


def _signature_template(xml_id: str) -> etree._Element:
    signature = etree.Element(f"{{{DSIG_NS}}}Signature", nsmap={None: DSIG_NS})  # type: ignore[dict-item]
    signature.set(XML_ID, f"Sig_{xml_id}")
    signed_info = etree.SubElement(signature, f"{{{DSIG_NS}}}SignedInfo")
    etree.SubElement(signed_info, f"{{{DSIG_NS}}}CanonicalizationMethod").set("Algorithm", xmldsig.C14N)
    etree.SubElement(signed_info, f"{{{DSIG_NS}}}SignatureMethod").set("Algorithm", xmldsig.RSA_SHA256)
    reference = etree.SubElement(signed_info, f"{{{DSIG_NS}}}Reference")
    reference.set("URI", f"#{xml_id}")
    transforms = etree.SubElement(reference, f"{{{DSIG_NS}}}Transforms")
    etree.SubElement(transforms, f"{{{DSIG_NS}}}Transform").set("Algorithm", xmldsig.ENVELOPED)
    etree.SubElement(reference, f"{{{DSIG_NS}}}DigestMethod").set("Algorithm", xmldsig.SHA256)
    etree.SubElement(reference, f"{{{DSIG_NS}}}DigestValue")
    etree.SubElement(signature, f"{{{DSIG_NS}}}SignatureValue")
    return signature


def sign_document(root: etree._Element, xml_id: str, key: rsa.RSAPrivateKey, signer_chain: GidChain) -> str:
    """Append a signature over credential xml_id, signed with key; return the document as a string."""
    signatures = _only_child(root, "signatures", "<signed-credential>", required=False)
    if signatures is None:
        signatures = etree.SubElement(root, "signatures")
    signatures.append(_signature_template(xml_id))
    # Re-parse so that libxml2 registers every xml:id, exactly as a verifier will see the document.
    document = etree.fromstring(etree.tostring(root), etree.XMLParser(resolve_entities=False, no_network=True))
    signature = next(node for node in document.iter(f"{{{DSIG_NS}}}Signature") if node.get(XML_ID) == f"Sig_{xml_id}")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    xmldsig.sign(signature, key_pem)
    # KeyInfo lies outside SignedInfo: it is not signed, it tells the verifier which chain to check.
    key_info = etree.SubElement(signature, f"{{{DSIG_NS}}}KeyInfo")
    x509_data = etree.SubElement(key_info, f"{{{DSIG_NS}}}X509Data")
    for gid in signer_chain:
        der = gid.certificate.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, f"{{{DSIG_NS}}}X509Certificate").text = base64.b64encode(der).decode("ascii")
    body: bytes = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    return body.decode("utf-8")


def _check_signer(key: rsa.RSAPrivateKey, signer_chain: GidChain) -> None:
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signer = (
        signer_chain[0]
        .certificate.public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if public != signer:
        raise BadArgs("the signing key does not belong to the first certificate of the signer's GID chain")


def issue_credential(request: CredentialRequest, key: rsa.RSAPrivateKey, signer_chain: GidChain) -> str:
    """Create and sign a root credential (the issuing authority signs it). Returns the XML document."""
    _check_signer(key, signer_chain)
    root = new_document_root()
    root.append(_credential_element(request, "ref0"))
    return sign_document(root, "ref0", key, signer_chain)


def delegate_credential(
    parent_xml: bytes | str,
    to_chain: GidChain,
    key: rsa.RSAPrivateKey,
    delegator_chain: GidChain,
    privileges: tuple[str, ...] | None = None,
    can_delegate: bool = False,
    expires: datetime | None = None,
) -> str:
    """Delegate a credential to another owner, signed by the parent's owner (the delegator).

    By default every privilege is passed on, without the right to delegate further, with the parent's expiry.
    Refuses (BadArgs) what a verifier would refuse: a privilege the parent cannot delegate, a later expiry, an
    expiry not after now (the parent's too: an expired credential), or a delegator who does not own the parent.
    """
    _check_signer(key, delegator_chain)
    parsed = read_credential(parent_xml)
    parent = parsed.credential
    if parent.owner_chain[0].key_id != delegator_chain[0].key_id:
        raise BadArgs(f"only the owner of the credential ({parent.owner_urn}) may delegate it")
    names = privileges if privileges is not None else parent.privilege_names
    held = {privilege.name: privilege for privilege in parent.privileges}
    for name in names:
        if name not in held:
            raise BadArgs(f"cannot delegate {name!r}: the credential does not hold it")
        if not held[name].can_delegate:
            raise BadArgs(f"cannot delegate {name!r}: the credential does not allow delegating it")
    new_expires = expires or parent.expires
    now = utcnow()
    if new_expires <= now:  # a dead credential is of no use to anyone: say so rather than write it
        raise BadArgs(
            f"the expiry {format_time(new_expires)} is not after now ({format_time(now)}): give a later --expires"
            + ("" if expires is not None else f" (the credential itself expired at {format_time(parent.expires)})")
        )
    if new_expires > parent.expires:
        raise BadArgs(f"a delegated credential cannot outlive its parent ({format_time(parent.expires)})")
    used_ids = {element.get(XML_ID) for element in parsed.root.iter() if element.get(XML_ID)}
    number = 0
    while f"ref{number}" in used_ids:
        number += 1
    xml_id = f"ref{number}"
    request = CredentialRequest(
        owner_chain=to_chain,
        target_chain=parent.target_chain,
        expires=new_expires,
        privileges=tuple(Privilege(name=name, can_delegate=can_delegate) for name in names),
    )
    root = new_document_root(parsed.root)
    element = _credential_element(request, xml_id)
    parent_holder = etree.SubElement(element, "parent")
    old_top = _only_child(parsed.root, "credential", "<signed-credential>")
    assert old_top is not None
    parent_holder.append(old_top)
    root.append(element)
    old_signatures = _only_child(parsed.root, "signatures", "<signed-credential>", required=False)
    signatures = etree.SubElement(root, "signatures")
    if old_signatures is not None:
        for signature in list(old_signatures):
            signatures.append(signature)
    return sign_document(root, xml_id, key, delegator_chain)
