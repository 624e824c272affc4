"""The caller-chain verdict cache: a trusted chain is verified once and then looked up, but never reused by other
trusted roots, outside the validity of every certificate checked, or after a refusal."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from sfa_omf.errors import Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust import verifier as verifier_module
from sfa_omf.trust.credential import delegate_credential
from sfa_omf.trust.gid import GidChain
from sfa_omf.trust.roots import TrustedRoots, VerifiedChain
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki


def test_a_trusted_chain_is_verified_once_then_looked_up(pki: DemoPki) -> None:
    cache = VerdictCache()
    verifier = CredentialVerifier(pki.roots, cache)
    chain = pki.users["alice"].chain
    now = utcnow()
    assert verifier.verify_caller(chain, now) == chain[0]
    assert cache.chain_hits == 0
    assert verifier.verify_caller(chain, now + timedelta(minutes=5)) == chain[0]
    assert cache.chain_hits == 1
    # Another caller's chain is its own entry.
    assert verifier.verify_caller(pki.users["bob"].chain, now) == pki.users["bob"].chain[0]
    assert cache.chain_hits == 1


def test_the_verdict_is_not_reused_outside_the_validity_of_every_certificate(pki: DemoPki) -> None:
    cache = VerdictCache()
    verifier = CredentialVerifier(pki.roots, cache)
    chain = pki.users["alice"].chain
    verifier.verify_caller(chain, utcnow())
    first_expiry = min(gid.not_after for gid in [*chain, *pki.roots.anchors])
    latest_start = max(gid.not_before for gid in [*chain, *pki.roots.anchors])
    assert verifier.verify_caller(chain, first_expiry) == chain[0]  # still valid at its last second
    with pytest.raises(TrustError) as refused:
        verifier.verify_caller(chain, latest_start - timedelta(seconds=1))
    assert refused.value.reason == Reason.CERTIFICATE_EXPIRED
    hits = cache.chain_hits
    verifier.verify_caller(chain, utcnow())  # that refusal left the verdict in place
    assert cache.chain_hits == hits + 1
    with pytest.raises(TrustError) as refused:
        verifier.verify_caller(chain, first_expiry + timedelta(seconds=1))
    assert refused.value.reason == Reason.CERTIFICATE_EXPIRED
    verifier.verify_caller(chain, utcnow())  # time past the expiry dropped the verdict: verified afresh
    assert cache.chain_hits == hits + 1


def test_other_trusted_roots_never_reuse_a_verdict(pki: DemoPki) -> None:
    cache = VerdictCache()
    chain = pki.users["alice"].chain
    CredentialVerifier(pki.roots, cache).verify_caller(chain, utcnow())
    stranger = CredentialVerifier(TrustedRoots(()), cache)  # the same cache, no trusted root
    for _ in range(2):  # a refusal is not cached either
        with pytest.raises(TrustError) as refused:
            stranger.verify_caller(chain, utcnow())
        assert refused.value.reason == Reason.CALLER_UNTRUSTED
    assert cache.chain_hits == 0


def test_without_a_cache_every_call_verifies(pki: DemoPki) -> None:
    verifier = CredentialVerifier(pki.roots)
    chain = pki.users["alice"].chain
    with pytest.raises(TrustError):
        verifier.verify_caller(chain, chain[0].not_after + timedelta(seconds=1))
    assert verifier.verify_caller(chain, utcnow()) == chain[0]


def test_a_cold_check_verifies_each_distinct_chain_of_a_credential_once(
    pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delegated credential names six chains (signer, owner and target of each step) but only four distinct ones:
    the authority's, alice's (owner of the parent, signer of the child), bob's and the slice's (target of both)."""
    alice, bob = pki.users["alice"], pki.users["bob"]
    delegated = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, privileges=("info",))
    checked: list[tuple[str, ...]] = []
    real = verifier_module.check_chain

    def counting(chain: GidChain, roots: TrustedRoots, at: datetime, role: str = "certificate") -> VerifiedChain:
        checked.append(tuple(gid.fingerprint for gid in chain))
        return real(chain, roots, at, role)

    monkeypatch.setattr(verifier_module, "check_chain", counting)
    verified = CredentialVerifier(pki.roots).verify(delegated, utcnow())
    assert verified.owner_urn.endswith("+user+bob") and verified.depth == 1
    assert len(checked) == len(set(checked)) == 4
