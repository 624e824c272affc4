"""The one place that talks to libxmlsec1 (through the ``xmlsec`` Python binding, in-process, never a subprocess).

Algorithms are named by their XML-DSig URIs. Verification enables only the transforms and algorithms listed here,
so a signature cannot smuggle in XPath, XSLT or an HMAC; and the key is always the one the caller chose, never one
xmlsec would pick from the signature's own KeyInfo.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

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
    """Empty the cache of loaded keys (see verifier.forget_certificates)."""
    _cached_public_key.cache_clear()


# Looked up once: the same transforms are enabled in every verification's context.
_REFERENCE_TRANSFORMS = tuple(getattr(_xmlsec.Transform, name) for name in ("ENVELOPED", *_C14N, *_DIGESTS))
_SIGNATURE_TRANSFORMS = tuple(getattr(_xmlsec.Transform, name) for name in (*_C14N, *_SIGNATURE_METHODS))


def verify(signature: etree._Element, subject_public_key_info: bytes) -> None:
    """Verify a Signature element with the public key given as DER SubjectPublicKeyInfo (the signer certificate's,
    chosen by the caller); raise SignatureInvalid."""
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
