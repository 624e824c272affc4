"""The SFA Registry API over real TLS, in the order sfi.py calls it: bootstrap with GetSelfCredential, Resolve,
GetCredential for the slice, Resolve of the slice and its researchers; then the refusals, as XML-RPC faults."""

from __future__ import annotations

import os
import xmlrpc.client
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Records
from sfa_omf.server.app import start_registry
from sfa_omf.times import utcnow
from sfa_omf.trust.pki import create_gid, load_private_key_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.sshkeys import ssh_key
from tests.tls_harness import proxy


def test_sfi_flow_and_refusals(running_reactor: Any, tmp_path: Path) -> None:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    database.upgrade()
    register_demo(report, database)
    authority = LocalAuthority.load(settings.data_dir, "tb")
    authority.issue_gid("tb.private", "slice")  # a slice nobody is a researcher of
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        alice_dir = Path(report.sfi_dirs["alice"])
        key_path = alice_dir / "tb.alice.pkey"
        key = load_private_key_file(str(key_path))
        # sfi.py starts from its private key alone: a self-signed certificate for it.
        self_signed = create_gid("urn:publicid:IDN+tb+user+alice", key.public_key(), key)
        (tmp_path / "self.pem").write_text(self_signed.pem())
        bootstrap = proxy(url, str(tmp_path / "self.pem"), str(key_path))
        assert bootstrap.GetVersion()["interface"] == "registry"
        user_cred = bootstrap.GetSelfCredential(self_signed.pem(), "tb.alice", "user")
        # Still on the self-signed certificate, sfi.py fetches its GID: the credential and the key prove who it is.
        (bootstrapped,) = bootstrap.Resolve("tb.alice", [user_cred])
        assert bootstrapped["gid"].startswith("-----BEGIN CERTIFICATE-----")
        client = proxy(url, str(alice_dir / "tb.alice.user.gid"), str(key_path))
        (me,) = client.Resolve("tb.alice", [user_cred])
        assert (me["reg-urn"], me["type"], me["email"]) == (
            "urn:publicid:IDN+tb+user+alice",
            "user",
            "alice@tb.example.org",
        )
        slice_cred = client.GetCredential(user_cred, "tb.demo", "slice")
        verifier = CredentialVerifier(load_trusted_roots(str(tmp_path / "tb" / "trusted_roots")))
        alice_chain = authority.issued_chain("tb.alice")
        verified = verifier.check_call(
            alice_chain, [slice_cred], "urn:publicid:IDN+tb+slice+demo", "createsliver", utcnow()
        )
        assert verified.owner_urn == "urn:publicid:IDN+tb+user+alice"
        (demo,) = client.Resolve("urn:publicid:IDN+tb+slice+demo", [user_cred])
        assert demo["reg-researchers"] == ["tb.alice", "tb.bob"]
        researchers = client.Resolve(["urn:publicid:IDN+tb+user+alice", "urn:publicid:IDN+tb+user+bob"], [user_cred])
        assert [record["hrn"] for record in researchers] == ["tb.alice", "tb.bob"]
        listed = {record["hrn"] for record in client.List("tb", [user_cred])}
        assert {"tb.alice", "tb.bob", "tb.demo", "tb.private"} <= listed

        def fault(call: Any, *args: Any) -> xmlrpc.client.Fault:
            with pytest.raises(xmlrpc.client.Fault) as raised:
                call(*args)
            assert raised.value.faultString
            return raised.value

        bob_dir = Path(report.sfi_dirs["bob"])
        bob = proxy(url, str(bob_dir / "tb.bob.user.gid"), str(bob_dir / "tb.bob.pkey"))
        assert fault(bob.GetSelfCredential, self_signed.pem(), "tb.alice", "user").faultCode == 22
        assert fault(client.GetCredential, user_cred, "tb.private", "slice").faultCode == 3
        assert fault(client.GetCredential, user_cred, "tb.bob", "user").faultCode == 3
        assert fault(client.Resolve, "tb.nobody", [user_cred]).faultCode == 12
        assert fault(client.Resolve, "tb.alice", []).faultCode == 3
        assert fault(bob.Resolve, "tb.alice", [user_cred]).faultCode == 22  # alice's credential, bob calling
        assert fault(client.Register, {}, user_cred).faultCode == 1
        # A self-signed certificate naming alice but holding another key gets nothing from alice's credential.
        impostor_key = load_private_key_file(str(bob_dir / "tb.bob.pkey"))
        impostor = create_gid("urn:publicid:IDN+tb+user+alice", impostor_key.public_key(), impostor_key)
        (tmp_path / "impostor.pem").write_text(impostor.pem())
        mallory = proxy(url, str(tmp_path / "impostor.pem"), str(bob_dir / "tb.bob.pkey"))
        assert fault(mallory.Resolve, "tb.alice", [user_cred]).faultCode == 22
        assert fault(mallory.GetSelfCredential, impostor.pem(), "tb.alice", "user").faultCode == 22
        assert Records(database).get("tb.demo") is not None
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)


def test_register_update_remove(running_reactor: Any, tmp_path: Path) -> None:
    """An authority credential registers, updates and removes records; a user updates only their own email and keys."""
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    database.upgrade()
    register_demo(report, database)
    authority = LocalAuthority.load(settings.data_dir, "tb")
    alice_chain = authority.issued_chain("tb.alice")
    operator_cred = authority.credential(alice_chain, authority.chain)  # alice is also an operator here
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        alice_dir, bob_dir = Path(report.sfi_dirs["alice"]), Path(report.sfi_dirs["bob"])
        alice = proxy(url, str(alice_dir / "tb.alice.user.gid"), str(alice_dir / "tb.alice.pkey"))
        bob = proxy(url, str(bob_dir / "tb.bob.user.gid"), str(bob_dir / "tb.bob.pkey"))
        alice_cred = (alice_dir / "tb.alice.user.cred").read_text()
        bob_cred = (bob_dir / "tb.bob.user.cred").read_text()

        def code(call: Any, *args: Any) -> int:
            with pytest.raises(xmlrpc.client.Fault) as raised:
                call(*args)
            assert raised.value.faultString
            return int(raised.value.faultCode)

        gid = alice.Register({"hrn": "tb.dave", "type": "user", "email": "dave@tb.example.org"}, [operator_cred])
        assert gid.startswith("-----BEGIN CERTIFICATE-----")
        (dave,) = alice.Resolve("tb.dave", [alice_cred])
        assert (dave["reg-urn"], dave["email"]) == ("urn:publicid:IDN+tb+user+dave", "dave@tb.example.org")
        alice.Register({"hrn": "tb.exp", "type": "slice", "reg-researchers": ["tb.bob"]}, [operator_cred])
        assert bob.GetCredential(bob_cred, "tb.exp", "slice").startswith("<?xml")
        assert code(alice.Register, {"hrn": "tb.dave", "type": "user"}, [operator_cred]) == 17
        assert code(bob.Register, {"hrn": "tb.eve", "type": "user"}, [bob_cred]) in (3, 22)
        assert code(alice.Register, {"hrn": "other.eve", "type": "user"}, [operator_cred]) in (3, 22)
        assert alice.Update({"hrn": "tb.alice", "reg-keys": [ssh_key("alice@laptop")]}, [alice_cred]) == 1
        (me,) = alice.Resolve("tb.alice", [alice_cred])
        assert me["reg-keys"] == [ssh_key("alice@laptop")]
        assert code(bob.Update, {"hrn": "tb.alice", "email": "x@y"}, [bob_cred]) == 3
        assert code(bob.Update, {"hrn": "tb.bob", "reg-researchers": ["tb.bob"]}, [bob_cred]) == 3
        assert alice.Update({"hrn": "tb.exp", "reg-researchers": ["tb.alice"]}, [operator_cred]) == 1
        assert code(bob.GetCredential, bob_cred, "tb.exp", "slice") == 3
        assert code(bob.Remove, "tb.dave", [bob_cred], "user") in (3, 22)
        assert alice.Remove("tb.dave", [operator_cred], "user") == 1
        assert code(alice.Resolve, "tb.dave", [alice_cred]) == 12
        assert not (tmp_path / "tb" / "gids" / "tb.dave.gid").exists(), "a restart must not bring it back"
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)


#: What the monkeypatched authority check answers: a PI's own (undelegated) authority credential.
UNDELEGATED = SimpleNamespace(delegated=False)


def test_a_register_whose_record_cannot_be_written_leaves_no_gid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing half-done: the GID file issued before the record is written goes when the write fails, so the same
    Register works once the database does."""
    from sfa_omf.calendar.database import sqlite_url
    from sfa_omf.registry.api import RegistryApi
    from sfa_omf.server.xmlrpc import CallContext

    init_directory(str(tmp_path / "lab"), "lab", ())
    authority = LocalAuthority.load(str(tmp_path / "lab"), "lab")
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    records = Records(database)
    api = RegistryApi(authority, records, None)  # type: ignore[arg-type]
    monkeypatch.setattr(api, "_authority_caller", lambda *args: UNDELEGATED)  # the caller's rights are not the point

    def database_down(record: object) -> None:
        raise RuntimeError("injected: the registry's database failed")

    monkeypatch.setattr(records, "add", database_down)
    context = CallContext((), "127.0.0.1", "/")
    with pytest.raises(RuntimeError):
        api.register(context, ({"hrn": "lab.newuser", "type": "user"}, []))
    assert not os.path.exists(authority.issued_gid_path("lab.newuser"))
    monkeypatch.undo()
    monkeypatch.setattr(api, "_authority_caller", lambda *args: UNDELEGATED)
    assert "BEGIN CERTIFICATE" in api.register(context, ({"hrn": "lab.newuser", "type": "user"}, []))
