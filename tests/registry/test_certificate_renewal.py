"""The site's own certificates can be renewed: ``sfa-omf init`` issues the root, am.gid and the users' GIDs at the
same moment for the same life, so they expire together, and the operator is the authority nobody else can renew.

* ``sfa-omf authority renew``: the root again with the same key, later; am.gid and the issued GIDs under it; the
  registry's records and the users' sfi.py files follow; what the earlier root signed still verifies.
* ``sfa-omf user renew NAME``: the user's GID again with the same key; record, memberships, keys, sfi.py directory
  kept.
* ``sfa-omf init`` on an existing site re-issues an expired (or nearly expired) am.gid with the same key; the TLS
  listener serves it.

Time passing is made with real certificates of explicit validity (pki.create_gid with a ``not_before`` in the past),
written where the site keeps them, as they would be after years.
"""

from __future__ import annotations

import logging
import socket
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select
from twisted.web.resource import Resource
from twisted.web.server import Site

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import RegistryRecord
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority, same_key
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Records, record_chain
from sfa_omf.server.tls import ServerTls
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file
from sfa_omf.trust.roots import load_trusted_roots, verify_chain
from sfa_omf.trust.verifier import CredentialVerifier
from tests.tls_harness import Listener

pytestmark = pytest.mark.usefixtures("running_reactor")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "tb"
    report = init_directory(str(directory), "tb", ("alice",))
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    database.upgrade()
    register_demo(report, database)
    database.dispose()
    return directory


def run(capsys: pytest.CaptureFixture[str], directory: Path, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config", str(directory / "sfa-omf.conf")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def aged(gid: Gid, signer: Path, issuer: Gid | None, days_ago: float, days: float) -> Gid:
    """``gid`` issued again (same URN, UUID, e-mail, key) as if ``days_ago`` days ago for ``days`` days."""
    public_key: Any = gid.certificate.public_key()
    return create_gid(
        gid.urn or "",
        public_key,
        load_private_key_file(str(signer)),
        issuer=issuer,
        email=gid.email,
        lifetime=timedelta(days=days),
        not_before=utcnow() - timedelta(days=days_ago),
        subject_uuid=gid.uuid,
    )


def write(path: Path, chain: GidChain) -> None:
    path.write_text(chain_pem(chain))


def set_record_gid(directory: Path, hrn: str, chain: GidChain) -> None:
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    with database.write() as session:
        row = session.scalar(select(RegistryRecord).where(RegistryRecord.hrn == hrn))
        assert row is not None
        row.gid = chain_pem(chain)
    database.dispose()


def records(directory: Path) -> Records:
    return Records(Database(read_config(str(directory / "sfa-omf.conf")).calendar_url))


def age_site(site: Path, root_days_ago: float, root_days: float, leaf_days_ago: float, leaf_days: float) -> Gid:
    """The site as years later: the root, am.gid and alice's GID (gids/, sfi.py directory, record) re-dated; the
    aged root."""
    key = site / "authority" / "tb.pkey"
    root = aged(load_gid_chain_file(str(site / "authority" / "tb.gid"))[0], key, None, root_days_ago, root_days)
    write(site / "authority" / "tb.gid", (root,))
    write(site / "trusted_roots" / "tb.gid", (root,))
    am = aged(load_gid_chain_file(str(site / "aggregate" / "am.gid"))[0], key, root, leaf_days_ago, leaf_days)
    write(site / "aggregate" / "am.gid", (am, root))
    alice = aged(load_gid_chain_file(str(site / "gids" / "tb.alice.gid"))[0], key, root, leaf_days_ago, leaf_days)
    for path in (site / "gids" / "tb.alice.gid", site / "users" / "alice" / "sfi" / "tb.alice.user.gid"):
        write(path, (alice, root))
    set_record_gid(site, "tb.alice", (alice, root))
    set_record_gid(site, "tb", (root,))
    return root


def test_authority_renew_after_everything_expired(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    """Five years on, the root, am.gid and alice's GID expired together: ``authority renew`` brings them back with
    their keys, and alice's old chain (the expired root after her leaf) verifies against the renewed root."""
    old_root = age_site(site, 400, 365, 400, 365)
    now = utcnow()
    with pytest.raises(Exception, match="expired"):
        verify_chain(
            load_gid_chain_file(str(site / "gids" / "tb.alice.gid")),
            load_trusted_roots(str(site / "trusted_roots")),
            now,
        )
    slices_before = records(site).memberships(["tb.alice"])["tb.alice"]
    keys_before = records(site).get("tb.alice").keys  # type: ignore[union-attr]

    code, out, _ = run(capsys, site, "authority", "renew", "--days", "730")
    assert code == 0
    assert "trust add-root" in out and "restart sfa-omf serve" in out
    root = load_gid_chain_file(str(site / "authority" / "tb.gid"))[0]
    assert root.key_id == old_root.key_id and root.certificate.subject == old_root.certificate.subject
    assert root.urn == old_root.urn and root.is_ca
    assert timedelta(days=729) < root.not_after - now <= timedelta(days=730)
    roots = load_trusted_roots(str(site / "trusted_roots"))
    assert [anchor.fingerprint for anchor in roots.anchors] == [root.fingerprint]
    assert (
        record_chain(records(site).get("tb") or pytest.fail("no authority record"))[0].fingerprint == root.fingerprint
    )

    am = load_gid_chain_file(str(site / "aggregate" / "am.gid"))
    assert same_key(am[0], load_private_key_file(str(site / "aggregate" / "am.pkey")))
    assert am[0].not_after == root.not_after and verify_chain(am, roots, now).fingerprint == root.fingerprint

    sfi = site / "users" / "alice" / "sfi"
    alice = load_gid_chain_file(str(sfi / "tb.alice.user.gid"))
    assert alice[0].not_after > now and verify_chain(alice, roots, now) == root
    assert load_gid_chain_file(str(site / "gids" / "tb.alice.gid"))[0].fingerprint == alice[0].fingerprint
    record = records(site).get("tb.alice")
    assert record is not None and record_chain(record)[0].fingerprint == alice[0].fingerprint
    assert record.keys == keys_before and records(site).memberships(["tb.alice"])["tb.alice"] == slices_before
    assert "tb.demo" in slices_before[0]
    assert not list(sfi.glob("*.cred"))  # they named the expired GIDs
    # The demo slice's GID too.
    assert verify_chain(load_gid_chain_file(str(site / "gids" / "tb.demo.gid")), roots, now) == root


def test_renewed_root_verifies_what_the_earlier_root_signed(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    """Renewed ahead of time (the root has 10 days left): a credential issued before keeps verifying against the
    renewed root alone, and a GID chain issued under the earlier root verifies even once that root has expired."""
    age_site(site, 355, 365, 1, 200)  # root: 10 days left; alice: 199
    authority = LocalAuthority.load(str(site), "tb")
    old_alice = load_gid_chain_file(str(site / "gids" / "tb.alice.gid"))
    credential = authority.credential(old_alice, old_alice, lifetime=timedelta(days=5), can_delegate=False)

    assert run(capsys, site, "authority", "renew")[0] == 0
    roots = load_trusted_roots(str(site / "trusted_roots"))
    (root,) = roots.anchors
    assert root.fingerprint != old_alice[1].fingerprint  # only the renewed root is trusted now
    verified = CredentialVerifier(roots).verify(credential, utcnow())
    assert verified.owner_urn == "urn:publicid:IDN+tb+user+alice"
    later = utcnow() + timedelta(days=30)  # the earlier root expired; alice's earlier leaf did not
    assert old_alice[1].not_after < later < old_alice[0].not_after
    assert verify_chain(old_alice, roots, later) == root


def test_user_renew_keeps_the_user(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    """An expired user certificate is re-issued with the same key: her record, SSH keys, slices, private key and
    sfi.py directory stay; its GID file is rewritten; cached credentials (naming the expired GID) go."""
    age_site(site, 1, 3650, 400, 365)
    sfi = site / "users" / "alice" / "sfi"
    private_key = (sfi / "tb.alice.pkey").read_bytes()
    before = records(site).get("tb.alice")
    assert before is not None
    memberships = records(site).memberships(["tb.alice"])["tb.alice"]

    code, out, _ = run(capsys, site, "user", "renew", "alice", "--days", "90")
    assert code == 0 and "tb.alice" in out
    now = utcnow()
    chain = load_gid_chain_file(str(sfi / "tb.alice.user.gid"))
    assert chain[0].key_id == record_chain(before)[0].key_id
    assert chain[0].uuid == record_chain(before)[0].uuid and chain[0].email == record_chain(before)[0].email
    assert timedelta(days=89) < chain[0].not_after - now <= timedelta(days=90)
    assert verify_chain(chain, load_trusted_roots(str(site / "trusted_roots")), now).urn == (
        "urn:publicid:IDN+tb+authority+sa"
    )
    after = records(site).get("tb.alice")
    assert after is not None and record_chain(after)[0].fingerprint == chain[0].fingerprint
    assert (after.keys, after.email, after.urn) == (before.keys, before.email, before.urn)
    assert records(site).memberships(["tb.alice"])["tb.alice"] == memberships and "tb.demo" in memberships[0]
    assert (sfi / "tb.alice.pkey").read_bytes() == private_key and (sfi / "sfi_config").exists()
    assert load_gid_chain_file(str(site / "gids" / "tb.alice.gid"))[0].fingerprint == chain[0].fingerprint
    assert not list(sfi.glob("*.cred"))


def test_user_renew_refused_while_the_root_is_expired(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    age_site(site, 400, 365, 400, 365)
    before = (site / "users" / "alice" / "sfi" / "tb.alice.user.gid").read_bytes()
    code, _, err = run(capsys, site, "user", "renew", "alice")
    assert code == 2 and "sfa-omf authority renew" in err
    assert (site / "users" / "alice" / "sfi" / "tb.alice.user.gid").read_bytes() == before


def served_certificate(port: int) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_init_reissues_an_expired_aggregate_certificate(
    site: Path, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-running init re-issues an expired am.gid with the same key (and says so); a TLS listener made from the
    site's files, as serve makes it, serves the new one."""
    age_site(site, 1, 3650, 400, 365)
    old = load_gid_chain_file(str(site / "aggregate" / "am.gid"))[0]
    with caplog.at_level(logging.WARNING, "sfa_omf.registry"):
        report = init_directory(str(site), "tb", ("alice",))
    gid_path = str(site / "aggregate" / "am.gid")
    assert gid_path in report.renewed and gid_path not in report.kept
    assert any("re-issued" in message and "am.gid" in message for message in caplog.messages)
    chain = load_gid_chain_file(gid_path)
    assert chain[0].key_id == old.key_id and chain[0].urn == old.urn and chain[0].not_after > utcnow()
    tls = ServerTls(str(site / "aggregate" / "am.pkey"), gid_path, require_client_certificate=False)
    port = listener.listen(Site(Resource()), tls)
    served = served_certificate(port)
    assert served.not_valid_after_utc > utcnow() and served.not_valid_after_utc == chain[0].not_after
    # A second run keeps it: it is far from its end.
    again = init_directory(str(site), "tb", ("alice",))
    assert gid_path in again.kept and not again.renewed


def test_init_says_what_it_reissued(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sfa-omf init`` on a site whose am.gid expired prints the file it re-issued (not only "left untouched")."""
    age_site(site, 1, 3650, 400, 365)
    capsys.readouterr()
    assert main(["init", str(site), "--authority", "tb", "--user", "alice"]) == 0
    printed = capsys.readouterr().out
    assert f"re-issued with the same key: {site / 'aggregate' / 'am.gid'}" in printed, printed
    assert main(["init", str(site), "--authority", "tb", "--user", "alice"]) == 0
    assert "re-issued" not in capsys.readouterr().out  # far from its end now: kept


def test_probe_says_when_the_served_certificate_expired(site: Path, listener: Listener) -> None:
    """``sfa-omf probe`` checks the validity of the certificate a server serves (its GetVersion answers whatever the
    dates): expired is a failure naming authority renew, ending within 30 days a warning, valid nothing. Over a real
    TLS listener serving the site's am.gid as serve does."""
    from sfa_omf.cli_server import _served_certificate_problem
    from tests.tls_harness import client_context

    gid_path, key_path = str(site / "aggregate" / "am.gid"), str(site / "aggregate" / "am.pkey")
    context = client_context(gid_path, key_path)

    def served_problem() -> tuple[bool, str]:
        port = listener.listen(Site(Resource()), ServerTls(key_path, gid_path, require_client_certificate=False))
        return _served_certificate_problem("127.0.0.1", port, context, 10)

    assert served_problem() == (False, "")
    age_site(site, 1, 3650, 400, 365)  # am.gid ended 35 days ago
    fatal, problem = served_problem()
    assert fatal and problem.startswith("its certificate expired on ") and "sfa-omf authority renew" in problem
    age_site(site, 1, 3650, 345, 365)  # 20 days left
    fatal, problem = served_problem()
    assert not fatal and problem.startswith("its certificate expires on ") and "sfa-omf authority renew" in problem
