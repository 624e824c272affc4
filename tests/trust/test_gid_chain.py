"""GIDs and chain verification: the authority/CA rules, naming rules and expiry, each refusal with its reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.errors import GeniCode, GeniError, Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.roots import TrustedRoots, load_trusted_roots, verify_chain
from tests.conftest import DemoPki

KEYS: dict[str, rsa.RSAPrivateKey] = {}


def key(name: str) -> rsa.RSAPrivateKey:
    """Keys are slow to make: one per name for the whole module."""
    if name not in KEYS:
        KEYS[name] = new_private_key()
    return KEYS[name]


def root(hrn: str, key_name: str | None = None) -> Gid:
    k = key(key_name or hrn)
    return create_gid(f"urn:publicid:IDN+{hrn.replace('.', ':')}+authority+sa", k.public_key(), k)


def issued(urn: str, key_name: str, issuer: Gid, issuer_key: str, **kwargs: object) -> Gid:
    return create_gid(urn, key(key_name).public_key(), key(issuer_key), issuer=issuer, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tree() -> dict[str, Gid]:
    top = root("fed")
    site = issued("urn:publicid:IDN+fed:site+authority+sa", "site", top, "fed")
    user = issued("urn:publicid:IDN+fed:site+user+ann", "ann", site, "site", email="ann@site.example")
    return {"fed": top, "site": site, "ann": user}


def test_gid_fields(tree: dict[str, Gid]) -> None:
    ann = tree["ann"]
    assert ann.urn == "urn:publicid:IDN+fed:site+user+ann"
    assert ann.hrn == "fed.site.ann"
    assert ann.type == "user"
    assert ann.email == "ann@site.example"
    assert ann.uuid and len(ann.uuid) == 36
    assert not ann.is_ca
    assert tree["site"].is_ca and tree["site"].is_authority
    assert ann.subject_cn == "fed.site.ann"


def test_chain_pem_round_trip(tree: dict[str, Gid]) -> None:
    chain = (tree["ann"], tree["site"], tree["fed"])
    again = load_gid_chain(chain_pem(chain))
    assert [gid.fingerprint for gid in again] == [gid.fingerprint for gid in chain]


def test_full_and_partial_chains_verify(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    now = utcnow()
    assert verify_chain((tree["ann"], tree["site"], tree["fed"]), roots, now) == tree["fed"]
    assert verify_chain((tree["ann"], tree["site"]), roots, now) == tree["fed"]
    assert verify_chain((tree["site"],), roots, now) == tree["fed"]
    assert verify_chain((tree["fed"],), roots, now) == tree["fed"]


def test_an_intermediate_may_be_the_trusted_root(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["site"],))
    assert verify_chain((tree["ann"], tree["site"], tree["fed"]), roots, utcnow()) == tree["site"]


def _refusal(chain: GidChain, roots: TrustedRoots, at: object = None) -> TrustError:
    with pytest.raises(TrustError) as caught:
        verify_chain(chain, roots, at or utcnow(), role="caller")  # type: ignore[arg-type]
    assert caught.value.message
    return caught.value


def test_untrusted_root(tree: dict[str, Gid]) -> None:
    other = root("other")
    refusal = _refusal((tree["ann"], tree["site"], tree["fed"]), TrustedRoots(anchors=(other,)))
    assert refusal.reason == Reason.UNTRUSTED_CHAIN
    assert refusal.code == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED
    assert "trusted_roots" in refusal.message


def test_look_alike_root_with_another_key(tree: dict[str, Gid]) -> None:
    impostor = root("fed", key_name="impostor")
    refusal = _refusal((tree["ann"], tree["site"]), TrustedRoots(anchors=(impostor,)))
    assert refusal.reason == Reason.UNTRUSTED_CHAIN
    assert "name matches a trusted root" in refusal.message


def test_expired_and_not_yet_valid(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    old = issued(
        "urn:publicid:IDN+fed:site+user+old",
        "old",
        tree["site"],
        "site",
        not_before=utcnow() - timedelta(days=10),
        lifetime=timedelta(days=1),
    )
    refusal = _refusal((old, tree["site"]), roots)
    assert refusal.reason == Reason.CERTIFICATE_EXPIRED
    assert refusal.code == GeniCode.EXPIRED
    assert "expired" in refusal.message
    future = issued(
        "urn:publicid:IDN+fed:site+user+new", "new", tree["site"], "site", not_before=utcnow() + timedelta(days=1)
    )
    assert _refusal((future, tree["site"]), roots).reason == Reason.CERTIFICATE_EXPIRED
    # The same chain is fine at a time inside its validity: the time of verification is a parameter.
    assert verify_chain((future, tree["site"]), roots, utcnow() + timedelta(days=2)) == tree["fed"]


def test_a_user_cannot_sign_certificates(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    minion = issued("urn:publicid:IDN+fed:site+user+minion", "minion", tree["ann"], "ann")
    refusal = _refusal((minion, tree["ann"], tree["site"]), roots)
    assert refusal.reason == Reason.INVALID_CHAIN
    assert "not an authority" in refusal.message


def test_an_authority_names_only_what_lies_under_it(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    stranger = issued("urn:publicid:IDN+elsewhere+user+eve", "eve", tree["site"], "site")
    refusal = _refusal((stranger, tree["site"]), roots)
    assert refusal.reason == Reason.INVALID_CHAIN
    assert "may not name" in refusal.message
    # A root that signs a name outside itself is refused too.
    outside = issued("urn:publicid:IDN+elsewhere+user+eve", "eve", tree["fed"], "fed")
    assert _refusal((outside,), roots).reason == Reason.INVALID_CHAIN


def test_a_broken_link(tree: dict[str, Gid]) -> None:
    roots = TrustedRoots(anchors=(tree["fed"],))
    # Claims the site as issuer (same subject name) but was signed by another key.
    fake_site = root("fed.site", key_name="fake-site")
    forged = issued("urn:publicid:IDN+fed:site+user+ann", "ann", fake_site, "fake-site")
    refusal = _refusal((forged, tree["site"]), roots)
    assert refusal.reason == Reason.INVALID_CHAIN
    assert "not signed by" in refusal.message


def test_empty_chain() -> None:
    assert _refusal((), TrustedRoots(anchors=())).reason == Reason.MALFORMED


def test_trusted_roots_directory(tmp_path: Path, tree: dict[str, Gid]) -> None:
    (tmp_path / "fed.gid").write_text(tree["fed"].pem())
    (tmp_path / "site.pem").write_text(chain_pem((tree["site"], tree["fed"])))
    (tmp_path / "README.txt").write_text("not a certificate")
    roots = load_trusted_roots(str(tmp_path))
    assert sorted(anchor.hrn for anchor in roots.anchors) == ["fed", "fed.site"]
    before = roots.fingerprint
    (tmp_path / "other.crt").write_text(root("other").pem())
    assert load_trusted_roots(str(tmp_path)).fingerprint != before


def test_watcher_sees_roots_changed_between_loading_and_watching(tmp_path: Path, tree: dict[str, Gid]) -> None:
    """A server loads its roots, then waits (the cluster's start-up lock, the authority's import) before it watches
    the directory: a root removed (or added) in between is noticed at the first check, not kept for good."""
    from sfa_omf.trust.roots import TrustedRootsWatcher

    (tmp_path / "fed.gid").write_text(tree["fed"].pem())
    (tmp_path / "other.gid").write_text(root("other").pem())
    loaded = load_trusted_roots(str(tmp_path))
    (tmp_path / "other.gid").unlink()  # ...while the server waits for the start-up lock
    watcher = TrustedRootsWatcher(str(tmp_path), loaded)

    removed = watcher.check()
    assert removed is not None and removed.removed == ("urn:publicid:IDN+other+authority+sa",)
    assert [anchor.hrn for anchor in removed.roots.anchors] == ["fed"]
    assert watcher.check() is None

    (tmp_path / "other.gid").write_text(root("other").pem())
    loaded = load_trusted_roots(str(tmp_path))
    assert TrustedRootsWatcher(str(tmp_path), loaded).check() is None, "nothing changed: nothing reported"
    (tmp_path / "third.gid").write_text(root("third").pem())  # ...added in the gap, as `trust add-root` would
    added = TrustedRootsWatcher(str(tmp_path), loaded).check()
    assert added is not None and added.added == ("urn:publicid:IDN+third+authority+sa",)


def test_demo_authority_chains_verify_with_openssl_rules(pki: DemoPki) -> None:
    for user in pki.users.values():
        assert verify_chain(user.chain, pki.roots, utcnow()).hrn == "testbed"


def test_watcher_follows_the_trusted_roots_directory(tmp_path: Path, tree: dict[str, Gid]) -> None:
    """What a running server does every few seconds and on SIGHUP (sfa_omf/server/app.py): added, rewritten and
    removed roots, a file that cannot be read (reported once, the roots in use stay)."""
    from sfa_omf.trust.roots import TrustedRootsWatcher

    (tmp_path / "fed.gid").write_text(tree["fed"].pem())
    watcher = TrustedRootsWatcher(str(tmp_path), load_trusted_roots(str(tmp_path)))
    assert watcher.check() is None
    (tmp_path / "other.gid").write_text(root("other").pem())
    change = watcher.check()
    assert change is not None and change.added == ("urn:publicid:IDN+other+authority+sa",) and change.removed == ()
    assert sorted(anchor.hrn for anchor in change.roots.anchors) == ["fed", "other"]
    assert watcher.check() is None
    (tmp_path / "other.gid").rename(tmp_path / "other.pem")  # same certificates: no change to report
    assert watcher.check() is None
    (tmp_path / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    with pytest.raises(GeniError, match="cannot read a PEM certificate chain"):
        watcher.check()
    assert watcher.check() is None  # the same broken state is not reported again
    assert sorted(anchor.hrn for anchor in watcher.roots.anchors) == ["fed", "other"]  # still in use
    (tmp_path / "broken.pem").unlink()
    (tmp_path / "other.pem").unlink()
    change = watcher.check()
    assert change is not None and change.removed == ("urn:publicid:IDN+other+authority+sa",)
    assert change.describe() == "1 root(s) (fed); removed urn:publicid:IDN+other+authority+sa"
