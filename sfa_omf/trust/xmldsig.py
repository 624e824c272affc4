"""XML-DSig signing and verification: the one place that talks to libxmlsec1 (through the ``xmlsec`` Python
binding, in-process, never a subprocess), and the direct check of the signatures credentials carry.

Algorithms are named by their XML-DSig URIs. Verification enables only the transforms and algorithms listed here,
so a signature cannot smuggle in XPath, XSLT or an HMAC; and the key is always the one the caller chose, never one
xmlsec would pick from the signature's own KeyInfo.

Why a direct check: libxmlsec1 spends about 230 µs on one credential signature (it builds XPath node sets for the
reference and filters every node through them), where the same C14N, digest and RSA check with lxml (libxml2's own
C14N) and cryptography take about 60 µs. The direct check handles only the shape every SFA, gcf and sfa-omf
credential has (see ``_direct_verdict``); it only ever *accepts*: any other shape, and any signature it cannot
accept, goes to libxmlsec1, whose verdict stands. So it cannot refuse a signature libxmlsec1 accepts, and it accepts
only when the digest of the referenced element's canonical form and the RSA signature over SignedInfo's canonical
form both check out.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import importlib
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

# python-xmlsec's bundled stubs lack most Transform and KeyFormat constants; use the module untyped, here only.
_xmlsec: Any = importlib.import_module("xmlsec")

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"

C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

_C14N = ("C14N", "C14N_COMMENTS", "EXCL_C14N", "C14N11")
_DIGESTS = ("SHA1", "SHA256", "SHA384", "SHA512")
_SIGNATURE_METHODS = ("RSA_SHA1", "RSA_SHA256", "RSA_SHA384", "RSA_SHA512")

ALLOWED_C14N = frozenset(getattr(_xmlsec.Transform, name).href for name in _C14N)
ALLOWED_DIGESTS = frozenset(getattr(_xmlsec.Transform, name).href for name in _DIGESTS)
ALLOWED_SIGNATURE_METHODS = frozenset(getattr(_xmlsec.Transform, name).href for name in _SIGNATURE_METHODS)
ALLOWED_REFERENCE_TRANSFORMS = frozenset({ENVELOPED}) | ALLOWED_C14N


class SignatureInvalid(Exception):
    """libxmlsec1 says the signature does not verify with the given key."""


def sign(signature: etree._Element, private_key_pem: bytes) -> None:
    """Fill in DigestValue and SignatureValue of a Signature template that is part of a parsed document."""
    context = _xmlsec.SignatureContext()
    context.key = _xmlsec.Key.from_memory(private_key_pem, _xmlsec.KeyFormat.PEM, None)
    context.sign(signature)


def _load_public_key(subject_public_key_info: bytes) -> Any:
    return _xmlsec.Key.from_memory(subject_public_key_info, _xmlsec.KeyFormat.DER, None)


_cached_public_key = functools.lru_cache(maxsize=1024)(_load_public_key)
#: Keys larger than this are loaded every time rather than kept: the cache is keyed by the caller's bytes and filled
#: before the signer's chain is checked. An RSA key of 16 384 bits (the largest OpenSSL verifies with) is 2.1 KB.
MAX_CACHED_KEY_BYTES = 4 * 1024


def _public_key(subject_public_key_info: bytes) -> Any:
    """The xmlsec key for a DER SubjectPublicKeyInfo, loaded once per distinct key of a usual size (a signer signs
    many credentials)."""
    if len(subject_public_key_info) > MAX_CACHED_KEY_BYTES:
        return _load_public_key(subject_public_key_info)
    return _cached_public_key(subject_public_key_info)


def forget_keys() -> None:
    """Empty the caches of loaded keys (see verifier.forget_certificates)."""
    _cached_public_key.cache_clear()
    _cached_rsa_key.cache_clear()


# Looked up once: the same transforms are enabled in every verification's context.
_REFERENCE_TRANSFORMS = tuple(getattr(_xmlsec.Transform, name) for name in ("ENVELOPED", *_C14N, *_DIGESTS))
_SIGNATURE_TRANSFORMS = tuple(getattr(_xmlsec.Transform, name) for name in (*_C14N, *_SIGNATURE_METHODS))


def verify(signature: etree._Element, subject_public_key_info: bytes) -> None:
    """Verify a Signature element with the public key given as DER SubjectPublicKeyInfo (the signer certificate's,
    chosen by the caller); raise SignatureInvalid. The direct check accepts the usual shape; libxmlsec1 judges
    everything else, and every signature the direct check does not accept."""
    if _direct_verdict(signature, subject_public_key_info):
        return
    verify_with_libxmlsec1(signature, subject_public_key_info)


def verify_with_libxmlsec1(signature: etree._Element, subject_public_key_info: bytes) -> None:
    """Verify a Signature element with libxmlsec1 alone; raise SignatureInvalid."""
    context = _xmlsec.SignatureContext()
    for transform in _REFERENCE_TRANSFORMS:
        context.enable_reference_transform(transform)
    for transform in _SIGNATURE_TRANSFORMS:
        context.enable_signature_transform(transform)
    try:
        # The binding copies the key into the context: a bare public key is copied in under a microsecond, where a
        # key loaded from a certificate carried the certificate along and its copy cost about as much as loading it.
        # A key libxmlsec1 cannot load (an algorithm it lacks) is a signature we cannot verify.
        context.key = _public_key(subject_public_key_info)
        context.verify(signature)
    except _xmlsec.Error as exc:
        raise SignatureInvalid(str(exc)) from exc


# -- the direct check ------------------------------------------------------------------------------------------------
_DS = f"{{{DSIG_NS}}}"
_XML_NS = "{http://www.w3.org/XML/1998/namespace}"
_XML_ID = f"{_XML_NS}id"
#: The one canonicalization the direct check does: inclusive C14N 1.0 without comments (what a "#id" reference whose
#: last transform is the enveloped one, and a SignedInfo naming this method, are canonicalized with).
_DIRECT_C14N = C14N
_RSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    _xmlsec.Transform.RSA_SHA1.href: hashes.SHA1,
    _xmlsec.Transform.RSA_SHA256.href: hashes.SHA256,
    _xmlsec.Transform.RSA_SHA384.href: hashes.SHA384,
    _xmlsec.Transform.RSA_SHA512.href: hashes.SHA512,
}
_DIGESTS_BY_URI = {getattr(_xmlsec.Transform, name).href: name.lower() for name in _DIGESTS}
#: The element a "#id" names, as libxmlsec1 finds it: libxml2's ID table, which xml:id attributes fill at parse time.
_BY_ID = etree.XPath("id($name)")


def _load_rsa_key(subject_public_key_info: bytes) -> rsa.RSAPublicKey | None:
    try:
        key = serialization.load_der_public_key(subject_public_key_info)
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, rsa.RSAPublicKey) else None


_cached_rsa_key = functools.lru_cache(maxsize=1024)(_load_rsa_key)


def _rsa_key(subject_public_key_info: bytes) -> rsa.RSAPublicKey | None:
    if len(subject_public_key_info) > MAX_CACHED_KEY_BYTES:
        return _load_rsa_key(subject_public_key_info)
    return _cached_rsa_key(subject_public_key_info)


def _children_named(parent: etree._Element, *names: str) -> list[etree._Element] | None:
    """The element children of ``parent`` when they are exactly ``names`` (local names in the XML-DSig namespace),
    in that order; a trailing ``KeyInfo?`` name may be missing. None for any other children: libxmlsec1 refuses
    elements out of the schema's order, or unknown ones, and the direct check must not accept what it refuses."""
    children = [child for child in parent if isinstance(child.tag, str)]
    wanted = [f"{_DS}{name.rstrip('?')}" for name in names]
    if names and names[-1].endswith("?") and len(children) == len(wanted) - 1:
        wanted = wanted[:-1]
    if [child.tag for child in children] != wanted:
        return None
    return children


#: XML's whitespace, the only characters libxmlsec1 skips in base64 content (str.split would also skip NBSP & co).
_XML_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _base64(element: etree._Element) -> bytes | None:
    if len(element):
        return None
    try:
        return base64.b64decode((element.text or "").translate(_XML_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        return None


def canonical_subtree(element: etree._Element) -> bytes:
    """Inclusive C14N 1.0, without comments, of ``element`` and its descendants as a subset of their document:
    the element carries every namespace in scope and the xml:* attributes it inherits from its ancestors (C14N 1.0
    inherits them all, xml:id included), as libxmlsec1 canonicalizes a "#id" reference or a SignedInfo.

    lxml's own C14N of an element that is not the root is not this (it repeats ``xmlns=""`` on children of a
    default namespace declared above, and drops inherited xml:* attributes), so the element is rebuilt as the root
    of a document of its own and canonicalized whole."""
    inherited: dict[str, str] = {}
    for ancestor in element.iterancestors():  # nearest first: the nearest value of each xml:* attribute wins
        for name, value in ancestor.attrib.items():
            if str(name).startswith(_XML_NS) and str(name) not in inherited:
                inherited[str(name)] = str(value)
    standalone = etree.Element(element.tag, nsmap=element.nsmap)  # type: ignore[arg-type]  # None: the default
    for name, value in inherited.items():
        if name not in element.attrib:
            standalone.set(name, value)
    for name, value in element.attrib.items():
        standalone.set(name, value)
    copied = copy.deepcopy(element)  # one copy of the subtree in C; its children (with their tails) move over
    standalone.text = copied.text
    standalone.extend(copied)
    return etree.tostring(standalone, method="c14n", with_comments=False)


def _direct_verdict(signature: etree._Element, subject_public_key_info: bytes) -> bool:
    """True when the signature certainly verifies with this key; False means "ask libxmlsec1" (another shape, or a
    check that failed here). The shape: one SignedInfo canonicalized with C14N 1.0; an RSA method; one Reference
    to "#id" of an element outside the Signature, whose transforms are the enveloped one alone (optionally followed
    by C14N 1.0); a SHA digest; base64 values."""
    # The schema's order, nothing else: SignedInfo, SignatureValue, KeyInfo (no Object: the verifier refuses it).
    parts = _children_named(signature, "SignedInfo", "SignatureValue", "KeyInfo?")
    if parts is None:
        return False
    signed_info, signature_value_element = parts[0], parts[1]
    signed_parts = _children_named(signed_info, "CanonicalizationMethod", "SignatureMethod", "Reference")
    if signed_parts is None:
        return False
    c14n, method, reference = signed_parts
    if len(c14n) or len(method):
        return False
    hash_algorithm = _RSA_HASHES.get(method.get("Algorithm", ""))
    if hash_algorithm is None or c14n.get("Algorithm") != _DIRECT_C14N:
        return False
    reference_parts = _children_named(reference, "Transforms", "DigestMethod", "DigestValue")
    if reference_parts is None or not _usual_transforms(reference_parts[0]):
        return False
    digest_method, digest_value_element = reference_parts[1], reference_parts[2]
    digest_name = _DIGESTS_BY_URI.get(digest_method.get("Algorithm", "")) if not len(digest_method) else None
    digest_value = _base64(digest_value_element)
    signature_value = _base64(signature_value_element)
    uri = reference.get("URI") or ""
    if digest_name is None or digest_value is None or signature_value is None or not uri.startswith("#"):
        return False
    # id() splits its argument at blanks and may find several elements: the one element whose xml:id is the
    # whole name, as libxmlsec1's exact lookup finds it, or none.
    targets = _BY_ID(signature, name=uri[1:])
    if not isinstance(targets, list) or len(targets) != 1 or not isinstance(targets[0], etree._Element):
        return False
    target = targets[0]
    if target.get(_XML_ID) != uri[1:]:
        return False
    # The enveloped transform removes the Signature from the referenced element; done here only when there is
    # nothing to remove (the Signature lies outside the element, as in every credential).
    if target is signature or any(ancestor is target for ancestor in signature.iterancestors()):
        return False
    if any(ancestor is signature for ancestor in target.iterancestors()):
        return False
    key = _rsa_key(subject_public_key_info)
    if key is None:
        return False
    try:
        if hashlib.new(digest_name, canonical_subtree(target)).digest() != digest_value:
            return False
        key.verify(signature_value, canonical_subtree(signed_info), padding.PKCS1v15(), hash_algorithm())
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, etree.LxmlError):
        return False  # libxmlsec1 judges it (an OpenSSL policy may refuse SHA-1 here, for one)
    return True


def _usual_transforms(transforms_element: etree._Element) -> bool:
    """The Reference's transforms are exactly the enveloped one, or it followed by C14N 1.0 without comments."""
    transforms = [child for child in transforms_element if isinstance(child.tag, str)]
    if any(transform.tag != f"{_DS}Transform" or len(transform) for transform in transforms):
        return False
    algorithms = [transform.get("Algorithm") for transform in transforms]
    return algorithms in ([ENVELOPED], [ENVELOPED, _DIRECT_C14N])
