"""The registry issues no credential that is dead on arrival, and none that outlives the certificates it names.

* GetSelfCredential (and GetCredential) for a user whose certificate has expired: refused (15, saying to ask the
  authority's operator for ``sfa-omf user renew NAME``), nothing written; after the renewal it is issued.
* A credential's expiry is capped at the owner's certificate's end, and at the target's (a slice whose GID ends
  before the slice does).

Over real TLS to the registry ``sfa-omf serve`` starts; time passing is made with real certificates of explicit
validity (pki.create_gid with a ``not_before`` in the past).
"""

from __future__ import annotations

import xmlrpc.client
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Records, record_chain
from sfa_omf.server.app import start_registry
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import read_credential
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.registry.test_certificate_renewal import age_site, aged, set_record_gid, write
from tests.tls_harness import proxy


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "tb"
    report = init_directory(str(directory), "tb", ("alice",))
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    database.upgrade()
    register_demo(report, database)
    database.dispose()
    return directory


def serve(running_reactor: Any, site: Path) -> tuple[Any, str, Database]:
    settings = read_config(str(site / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    return port, f"https://127.0.0.1:{port.getHost().port}/", database


def test_expired_user_gets_no_self_credential(
    running_reactor: Any, capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    age_site(site, 1, 3650, 400, 365)  # the root is fine; alice's certificate expired 35 days ago
    sfi = site / "users" / "alice" / "sfi"
    port, url, database = serve(running_reactor, site)
    try:
        alice = proxy(url, str(sfi / "tb.alice.user.gid"), str(sfi / "tb.alice.pkey"))
        before = Records(database).get("tb.alice")
        files_before = {path.name: path.read_bytes() for path in sfi.iterdir()}
        with pytest.raises(xmlrpc.client.Fault) as refused:
            alice.GetSelfCredential((sfi / "tb.alice.user.gid").read_text(), "tb.alice", "user")
        assert refused.value.faultCode == 15
        assert "sfa-omf user renew tb.alice" in refused.value.faultString and "expired" in refused.value.faultString
        assert Records(database).get("tb.alice") == before
        assert {path.name: path.read_bytes() for path in sfi.iterdir()} == files_before

        assert main(["user", "renew", "alice", "--config", str(site / "sfa-omf.conf")]) == 0
        capsys.readouterr()
        alice = proxy(url, str(sfi / "tb.alice.user.gid"), str(sfi / "tb.alice.pkey"))
        credential = alice.GetSelfCredential((sfi / "tb.alice.user.gid").read_text(), "tb.alice", "user")
        roots = load_trusted_roots(str(site / "trusted_roots"))
        assert CredentialVerifier(roots).verify(credential, utcnow()).owner_urn == "urn:publicid:IDN+tb+user+alice"
        # Her slice membership survived: she gets the demo slice's credential with it.
        slice_credential = alice.GetCredential(credential, "tb.demo", "slice")
        assert read_credential(slice_credential.encode()).credential.target_urn == "urn:publicid:IDN+tb+slice+demo"
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)


def test_credentials_end_with_the_certificates_they_name(running_reactor: Any, site: Path) -> None:
    """Alice's certificate has 3 days left, the demo slice's GID 2 (its record 30): her credential ends with her
    certificate, the slice credential with the slice's."""
    age_site(site, 1, 3650, 362, 365)
    key, root = site / "authority" / "tb.pkey", load_gid_chain_file(str(site / "authority" / "tb.gid"))[0]
    demo = aged(load_gid_chain_file(str(site / "gids" / "tb.demo.gid"))[0], key, root, 1, 3)
    write(site / "gids" / "tb.demo.gid", (demo, root))
    set_record_gid(site, "tb.demo", (demo, root))
    sfi = site / "users" / "alice" / "sfi"
    port, url, database = serve(running_reactor, site)
    try:
        alice = proxy(url, str(sfi / "tb.alice.user.gid"), str(sfi / "tb.alice.pkey"))
        owner_end = record_chain(Records(database).get("tb.alice") or pytest.fail("no alice"))[0].not_after
        assert owner_end - utcnow() < timedelta(days=3)
        credential = alice.GetSelfCredential((sfi / "tb.alice.user.gid").read_text(), "tb.alice", "user")
        expires = read_credential(credential.encode()).credential.expires
        assert owner_end - timedelta(minutes=1) <= expires <= owner_end
        slice_credential = alice.GetCredential(credential, "tb.demo", "slice")
        slice_expires = read_credential(slice_credential.encode()).credential.expires
        assert demo.not_after - timedelta(minutes=1) <= slice_expires <= demo.not_after
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
