"""A credential cannot make a call spend a minute of CPU in C14N: libxml2 sorts an element's attributes and
namespace declarations in quadratic time, and a credential may carry unknown elements. A real credential has a few
of each per delegation level; more than CREDENTIAL_LIMITS allows is refused (HOSTILE_XML) before any signature is
checked, whatever the document's encoding."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.am.credentials import is_abac_credential
from sfa_omf.errors import Reason, TrustError
from sfa_omf.times import parse_time, utcnow
from sfa_omf.trust.credential import CREDENTIAL_LIMITS, read_credential
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.speaksfor import ABAC_LIMITS, issue_speaks_for, verify_speaks_for
from sfa_omf.trust.verifier import CredentialVerifier
from sfa_omf.xmlsafe import UnsafeXml, XmlLimits, parse_untrusted
from tests.conftest import VECTORS, DemoPki

pytestmark = pytest.mark.interop

DELEGATED = Path(VECTORS) / "sfa" / "creds" / "bob.myslice.delegated.cred"


def _padded(extra: str) -> bytes:
    """The real delegated SFA credential with ``extra`` (an unknown element) inside its credential element."""
    text = DELEGATED.read_text()
    at = text.index("<credential ") + text[text.index("<credential ") :].index(">") + 1
    return (text[:at] + extra + text[at:]).encode("utf-8")


def _attributes(count: int) -> str:
    return "<pad " + " ".join(f'a{index}="x"' for index in range(count)) + "/>"


def _namespaces(count: int) -> str:
    return "<pad " + " ".join(f'xmlns:p{index}="urn:p{index}"' for index in range(count)) + "/>"


def test_real_credentials_are_well_within_the_limits(vectors: Path) -> None:
    """Every real SFA and geni-tools credential reads under the limits (they are not a constraint on real ones)."""
    paths = sorted(vectors.glob("*/creds/*.cred"))
    assert len(paths) >= 10, f"the real credentials were not found under {vectors}/*/creds"  # no empty loop passes
    for path in paths:
        read_credential(path.read_bytes())


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (_attributes(CREDENTIAL_LIMITS.max_attributes or 0), "attributes, more than the limit"),
        (_namespaces(CREDENTIAL_LIMITS.max_namespace_declarations or 0), "namespaces"),
    ],
    ids=["attributes", "namespace declarations"],
)
def test_a_credential_padded_for_c14n_is_refused_before_its_signatures(extra: str, said: str) -> None:
    verifier = CredentialVerifier(load_trusted_roots(str(Path(VECTORS) / "sfa" / "trusted_roots")))
    with pytest.raises(TrustError) as refused:
        verifier.verify(_padded(extra), parse_time("2020-01-01T00:00:00Z"))
    assert refused.value.reason is Reason.HOSTILE_XML
    assert said in refused.value.message


def test_the_limits_count_exactly() -> None:
    limits = XmlLimits(max_attributes=3, max_namespace_declarations=2)
    parse_untrusted(b'<r xmlns:a="urn:a" xmlns="urn:d"><s a:x="1" y="2" z="3"/></r>', limits)
    with pytest.raises(UnsafeXml, match="4 attributes"):
        parse_untrusted(b'<r w="0"><s x="1" y="2" z="3"/></r>', limits)
    with pytest.raises(UnsafeXml, match="3 namespaces"):
        parse_untrusted(b'<r xmlns:a="urn:a" xmlns:b="urn:b"><s xmlns="urn:d"/></r>', limits)


def test_another_encoding_does_not_hide_the_declarations() -> None:
    """In UTF-16 (or any encoding where "xmlns" is other bytes) the declarations are counted all the same."""
    limits = XmlLimits(max_namespace_declarations=2)
    document = '<?xml version="1.0" encoding="UTF-16"?><r xmlns:a="urn:a" xmlns:b="urn:b" xmlns:c="urn:c"/>'
    with pytest.raises(UnsafeXml, match="3 namespaces"):
        parse_untrusted(document.encode("utf-16"), limits)
    latin = '<?xml version="1.0" encoding="ISO-8859-1"?><r xmlns:a="urn:a" xmlns:b="urn:b" xmlns:c="urn:c">\u00e9</r>'
    with pytest.raises(UnsafeXml, match="3 namespaces"):
        parse_untrusted(latin.encode("latin-1"), limits)


def _speaks_for(pki: DemoPki, extra: str = "") -> str:
    """Alice's real statement that bob's key speaks for her, with ``extra`` (an unknown element) inside its
    credential element (which breaks its signature: only a refusal before the signatures are looked at says
    HOSTILE_XML)."""
    alice, bob = pki.users["alice"], pki.users["bob"]
    text = issue_speaks_for(alice.key, alice.chain, bob.chain[0], utcnow() + timedelta(hours=1))
    at = text.index("<credential ") + text[text.index("<credential ") :].index(">") + 1
    return text[:at] + extra + text[at:]


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (_attributes(ABAC_LIMITS.max_attributes or 0), "attributes, more than the limit"),
        (_namespaces(ABAC_LIMITS.max_namespace_declarations or 0), "namespaces"),
    ],
    ids=["attributes", "namespace declarations"],
)
def test_speaks_for_credentials_have_limits_too(pki: DemoPki, extra: str, said: str) -> None:
    """A speaks-for credential is read within ABAC_LIMITS, smaller than a privilege credential's: padded past them
    (though well within CREDENTIAL_LIMITS) it is refused as hostile before its signature is checked, and it is not
    taken for a speaks-for credential at all."""
    alice, bob = pki.users["alice"], pki.users["bob"]
    assert ABAC_LIMITS.max_attributes is not None and ABAC_LIMITS.max_namespace_declarations is not None
    assert CREDENTIAL_LIMITS.max_attributes is not None and CREDENTIAL_LIMITS.max_namespace_declarations is not None
    assert ABAC_LIMITS.max_attributes < CREDENTIAL_LIMITS.max_attributes // 2
    assert ABAC_LIMITS.max_namespace_declarations < CREDENTIAL_LIMITS.max_namespace_declarations // 2
    now = utcnow()
    plain = _speaks_for(pki)
    user = str(alice.chain[0].urn)
    assert verify_speaks_for(bob.chain, [plain], user, pki.roots, now)[0].urn == user
    assert is_abac_credential(plain)

    padded = _speaks_for(pki, extra)
    with pytest.raises(TrustError) as refused:
        verify_speaks_for(bob.chain, [padded], user, pki.roots, now)
    assert refused.value.reason is Reason.HOSTILE_XML
    assert said in refused.value.message
    assert not is_abac_credential(padded)
