"""A sub-authority names only what lies under it, judged by a URN's authority field, not by the HRN alone.

Sub-authority ``fed:sub`` (HRN ``fed.sub``) could issue ``urn:publicid:IDN+fed+user+sub`` and
``urn:publicid:IDN+fed+slice+sub``, a user and a slice of its parent ``fed`` whose HRN is ``fed.sub`` too: "is an
authority over" counts equal names, right for an authority naming itself, wrong for a user or slice. It could then
sign credentials over its parent's slice, and its authority credential covered that slice. Real certificates and
signed credentials, checked by the verifier as a server does.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.errors import Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import CredentialRequest, Privilege, issue_credential
from sfa_omf.trust.gid import Gid, GidChain
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.roots import TrustedRoots, verify_chain
from sfa_omf.trust.verifier import CredentialVerifier
from sfa_omf.xrn import is_authority_over_urn, parse_urn

KEYS: dict[str, rsa.RSAPrivateKey] = {}
FED_SLICE = "urn:publicid:IDN+fed+slice+sub"  # a slice of fed, HRN fed.sub
ALL = ("refresh", "embed", "bind", "control", "info")


def key(name: str) -> rsa.RSAPrivateKey:
    """Keys are slow to make: one per name for the whole module."""
    if name not in KEYS:
        KEYS[name] = new_private_key()
    return KEYS[name]


@pytest.fixture(scope="module")
def fed() -> dict[str, Gid]:
    top = create_gid("urn:publicid:IDN+fed+authority+sa", key("fed").public_key(), key("fed"))
    sub = create_gid("urn:publicid:IDN+fed:sub+authority+sa", key("sub").public_key(), key("fed"), issuer=top)
    return {
        "fed": top,
        "sub": sub,
        "dave": create_gid("urn:publicid:IDN+fed+user+dave", key("dave").public_key(), key("fed"), issuer=top),
        "erin": create_gid("urn:publicid:IDN+fed:sub+user+erin", key("erin").public_key(), key("sub"), issuer=sub),
        "fed_slice": create_gid(FED_SLICE, key("fed_slice").public_key(), key("fed"), issuer=top),
    }


def chain(fed: dict[str, Gid], name: str) -> GidChain:
    """A GID with its issuers up to fed's root."""
    gid = fed[name]
    return (
        (gid, fed["sub"], fed["fed"]) if gid.certificate.issuer == fed["sub"].certificate.subject else (gid, fed["fed"])
    )


def credential(
    signer: str, fed: dict[str, Gid], owner: GidChain, target: GidChain, privileges: tuple[str, ...] = ALL
) -> str:
    signer_chain = chain(fed, signer) if signer == "sub" else (fed["fed"],)
    expires = utcnow() + timedelta(hours=1)
    request = CredentialRequest(owner, target, expires, tuple(Privilege(name, True) for name in privileges))
    return issue_credential(request, key(signer), signer_chain)


def verifier(fed: dict[str, Gid]) -> CredentialVerifier:
    return CredentialVerifier(TrustedRoots(anchors=(fed["fed"],)))


@pytest.mark.parametrize("urn", ["urn:publicid:IDN+fed+user+sub", FED_SLICE])
def test_a_sub_authority_may_not_name_its_parent_s_user_or_slice(fed: dict[str, Gid], urn: str) -> None:
    forged = create_gid(urn, key("forged").public_key(), key("sub"), issuer=fed["sub"])
    assert forged.hrn == "fed.sub"  # the sub-authority's own HRN: why the HRN alone cannot decide

    with pytest.raises(TrustError) as refused:
        verify_chain((forged, fed["sub"], fed["fed"]), TrustedRoots(anchors=(fed["fed"],)), utcnow(), role="caller")

    assert refused.value.reason == Reason.INVALID_CHAIN
    assert "'fed.sub' may not name" in refused.value.message and urn in refused.value.message
    # Trusting the sub-authority itself as a root changes nothing: the root is no authority over that URN either.
    with pytest.raises(TrustError):
        verify_chain((forged, fed["sub"]), TrustedRoots(anchors=(fed["sub"],)), utcnow(), role="caller")


def test_what_each_authority_may_name_is_still_accepted(fed: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(fed["fed"],))
    assert verify_chain(chain(fed, "erin"), roots, utcnow()) == fed["fed"]  # the sub-authority's own user
    assert verify_chain(chain(fed, "fed_slice"), roots, utcnow()) == fed["fed"]  # fed's slice, by fed
    assert verify_chain((fed["sub"],), TrustedRoots(anchors=(fed["sub"],)), utcnow()) == fed["sub"]  # itself


def test_a_sub_authority_may_not_sign_a_credential_over_its_parent_s_slice(fed: dict[str, Gid]) -> None:
    by_fed = credential("fed", fed, chain(fed, "dave"), chain(fed, "fed_slice"))
    assert verifier(fed).verify(by_fed, utcnow()).target_urn == FED_SLICE  # the control: fed may
    by_sub = credential("sub", fed, chain(fed, "erin"), chain(fed, "fed_slice"))

    with pytest.raises(TrustError) as refused:
        verifier(fed).verify(by_sub, utcnow())

    assert refused.value.reason == Reason.ISSUER, refused.value.message


def test_a_sub_authority_s_authority_credential_does_not_cover_its_parent_s_slice(fed: dict[str, Gid]) -> None:
    authority_credential = credential("fed", fed, chain(fed, "erin"), (fed["sub"], fed["fed"]), ("authority",))
    checker = verifier(fed)
    verified = checker.verify(authority_credential, utcnow())
    checker.authorize(verified, fed["erin"], "urn:publicid:IDN+fed:sub+slice+exp", "delete")  # its own slice

    with pytest.raises(TrustError) as refused:
        checker.authorize(verified, fed["erin"], FED_SLICE, "delete")

    assert refused.value.reason == Reason.TARGET_MISMATCH, refused.value.message


def test_the_rule_by_a_urn_s_authority_field() -> None:
    assert not is_authority_over_urn("fed.sub", parse_urn("urn:publicid:IDN+fed+user+sub"))
    assert is_authority_over_urn("fed", parse_urn("urn:publicid:IDN+fed+user+sub"))
    assert is_authority_over_urn("fed", parse_urn("urn:publicid:IDN+fed:sub+slice+x"))
    assert is_authority_over_urn("fed.sub", parse_urn("urn:publicid:IDN+fed:sub+authority+sa"))  # itself
    assert not is_authority_over_urn("fed.sub", parse_urn("urn:publicid:IDN+fed+authority+sa"))
