"""The operator's registry commands (``sfa-omf user|slice|trust ...``), run as the console script would run them,
and what they change for callers of the Registry API over real TLS (slice expiry, PI authority credentials)."""

from __future__ import annotations

import json
import subprocess
import xmlrpc.client
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Records
from sfa_omf.server.app import start_registry
from sfa_omf.times import parse_time, utcnow
from sfa_omf.trust.credential import read_credential
from sfa_omf.trust.roots import load_trusted_roots
from tests.tls_harness import proxy


@pytest.fixture
def authority_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    return directory


def run(capsys: pytest.CaptureFixture[str], directory: Path, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config", str(directory / "sfa-omf.conf")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ssh_key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def test_users(capsys: pytest.CaptureFixture[str], authority_dir: Path, tmp_path: Path) -> None:
    key = ssh_key(tmp_path, "dave")
    code, out, _ = run(capsys, authority_dir, "user", "add", "dave", "--email", "dave@tb.org", "--ssh-key", str(key))
    assert code == 0 and "registered user tb.dave" in out
    sfi_dir = authority_dir / "users" / "dave" / "sfi"
    assert (sfi_dir / "tb.dave.pkey").stat().st_mode & 0o777 == 0o600
    assert "user = tb.dave" in (sfi_dir / "sfi_config").read_text()
    code, out, _ = run(capsys, authority_dir, "user", "show", "dave", "--json")
    shown = json.loads(out)
    assert (shown["urn"], shown["email"], shown["ssh_keys"]) == (
        "urn:publicid:IDN+tb+user+dave",
        "dave@tb.org",
        [key.read_text().strip()],
    )
    second = ssh_key(tmp_path, "dave2")
    assert run(capsys, authority_dir, "user", "add-key", "tb.dave", str(second))[0] == 0
    assert run(capsys, authority_dir, "user", "add-key", "tb.dave", str(second))[0] == 0  # the same key once
    code, out, _ = run(capsys, authority_dir, "user", "list", "--json")
    users = {user["hrn"]: user for user in json.loads(out)}
    assert set(users) == {"tb.alice", "tb.dave"}
    assert len(users["tb.dave"]["ssh_keys"]) == 2
    # Refusals: a name taken, a file that is no SSH key, an unknown user.
    code, _, err = run(capsys, authority_dir, "user", "add", "dave")
    assert code == 2 and "registered already" in err
    (tmp_path / "junk.pub").write_text("not a key\n")
    code, _, err = run(capsys, authority_dir, "user", "add-key", "dave", str(tmp_path / "junk.pub"))
    assert code == 2 and "not an SSH public key" in err
    code, _, err = run(capsys, authority_dir, "user", "show", "nobody")
    assert code == 2 and "no record tb.nobody" in err
    code, out, _ = run(capsys, authority_dir, "user", "remove", "dave")
    assert code == 0 and "removed user tb.dave" in out
    assert not (authority_dir / "gids" / "tb.dave.gid").exists()
    assert "tb.dave" not in run(capsys, authority_dir, "user", "list")[1]


def test_user_with_own_public_key(capsys: pytest.CaptureFixture[str], authority_dir: Path, tmp_path: Path) -> None:
    """A user who keeps their private key: the GID is issued for their public key and no key pair is written."""
    private = tmp_path / "erin.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True)
    public = tmp_path / "erin.pub.pem"
    openssl_rsa = ["openssl", "rsa", "-in", str(private), "-pubout"]
    subprocess.run([*openssl_rsa, "-out", str(public)], check=True, capture_output=True)
    code, out, _ = run(capsys, authority_dir, "user", "add", "erin", "--public-key", str(public))
    assert code == 0 and "sfi.py directory" not in out
    assert not (authority_dir / "users" / "erin").exists()
    authority = LocalAuthority.load(str(authority_dir), "tb")
    issued = authority.issued_chain("tb.erin")[0].certificate.public_key()
    expected = subprocess.run(openssl_rsa, capture_output=True, check=True)
    assert (
        issued.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        == expected.stdout
    )


def test_slices(capsys: pytest.CaptureFixture[str], authority_dir: Path) -> None:
    assert run(capsys, authority_dir, "user", "add", "dave")[0] == 0
    code, out, _ = run(capsys, authority_dir, "slice", "create", "exp", "--researcher", "alice", "--expires", "+7d")
    assert code == 0 and "registered slice tb.exp" in out
    assert run(capsys, authority_dir, "slice", "add-researcher", "exp", "dave")[0] == 0
    code, out, _ = run(capsys, authority_dir, "slice", "list", "--json")
    slices = {record["hrn"]: record for record in json.loads(out)}
    assert slices["tb.exp"]["researchers"] == ["tb.alice", "tb.dave"]
    first_expiry = parse_time(slices["tb.exp"]["expires"])
    assert timedelta(days=6, hours=23) < first_expiry - utcnow() <= timedelta(days=7)
    assert run(capsys, authority_dir, "slice", "renew", "exp", "+20d")[0] == 0
    renewed = json.loads(run(capsys, authority_dir, "user", "show", "tb.exp", "--json")[1])
    assert parse_time(renewed["expires"]) - first_expiry > timedelta(days=12)
    # Refusals: a past expiry, an unknown researcher, a slice that exists.
    code, _, err = run(capsys, authority_dir, "slice", "renew", "exp", "2020-01-01T00:00:00Z")
    assert code == 2 and "in the past" in err
    code, _, err = run(capsys, authority_dir, "slice", "create", "other", "--researcher", "ghost")
    assert code == 2 and "no user tb.ghost" in err
    assert run(capsys, authority_dir, "user", "show", "other")[0] == 2, "nothing half-done"
    assert run(capsys, authority_dir, "slice", "create", "exp")[0] == 2
    assert run(capsys, authority_dir, "slice", "remove", "exp")[0] == 0
    assert "tb.exp" not in run(capsys, authority_dir, "slice", "list")[1]


def test_trust_roots(capsys: pytest.CaptureFixture[str], authority_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_directory(str(other), "onelab", ("bob",))
    root = other / "authority" / "onelab.gid"
    code, out, _ = run(capsys, authority_dir, "trust", "add-root", str(root))
    assert code == 0 and "now trusting onelab" in out
    assert "trusted already" in run(capsys, authority_dir, "trust", "add-root", str(root))[1]
    listed = json.loads(run(capsys, authority_dir, "trust", "list", "--json")[1])
    assert {root["hrn"] for root in listed} == {"tb", "onelab"}
    roots = load_trusted_roots(str(authority_dir / "trusted_roots"))
    assert {anchor.hrn for anchor in roots.anchors} == {"tb", "onelab"}
    # A user's GID is no root; another "onelab" with another key is a look-alike.
    code, _, err = run(capsys, authority_dir, "trust", "add-root", str(other / "gids" / "onelab.bob.gid"))
    assert code == 2 and "not an authority's CA certificate" in err
    impostor = tmp_path / "impostor"
    init_directory(str(impostor), "onelab", ("eve",))
    code, _, err = run(capsys, authority_dir, "trust", "add-root", str(impostor / "authority" / "onelab.gid"))
    assert code == 2 and "look-alike" in err
    assert len(load_trusted_roots(str(authority_dir / "trusted_roots")).anchors) == 2


def test_slice_expiry_and_pi_credentials_over_tls(
    running_reactor: Any, capsys: pytest.CaptureFixture[str], authority_dir: Path
) -> None:
    """A slice credential lives no longer than the slice; an expired slice gets none; a PI gets the authority's
    credential and registers with it, a user who is no PI does not."""
    assert run(capsys, authority_dir, "user", "add", "pat", "--pi")[0] == 0
    assert run(capsys, authority_dir, "slice", "create", "short", "--researcher", "alice", "--expires", "+2d")[0] == 0
    assert run(capsys, authority_dir, "slice", "create", "old", "--researcher", "alice", "--expires", "+1d")[0] == 0
    settings = read_config(str(authority_dir / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    Records(database).update("tb.old", expires=utcnow() - timedelta(hours=1))  # time has passed
    register_demo(init_directory(str(authority_dir), "tb", ("alice",)), database)
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        alice_dir, pat_dir = authority_dir / "users" / "alice" / "sfi", authority_dir / "users" / "pat" / "sfi"
        alice = proxy(url, str(alice_dir / "tb.alice.user.gid"), str(alice_dir / "tb.alice.pkey"))
        pat = proxy(url, str(pat_dir / "tb.pat.user.gid"), str(pat_dir / "tb.pat.pkey"))
        alice_cred = (alice_dir / "tb.alice.user.cred").read_text()
        slice_cred = alice.GetCredential(alice_cred, "tb.short", "slice")
        expires = read_credential(slice_cred.encode()).credential.expires
        assert timedelta(days=1, hours=23) < expires - utcnow() <= timedelta(days=2)
        (record,) = alice.Resolve("tb.short", [alice_cred])
        assert parse_time(record["expires"]) >= expires
        with pytest.raises(xmlrpc.client.Fault) as expired:
            alice.GetCredential(alice_cred, "tb.old", "slice")
        assert expired.value.faultCode == 21 and "renew" in expired.value.faultString
        with pytest.raises(xmlrpc.client.Fault) as not_pi:
            alice.GetCredential(alice_cred, "tb", "authority")
        assert not_pi.value.faultCode == 3 and "PI" in not_pi.value.faultString
        pat_cred = pat.GetSelfCredential((pat_dir / "tb.pat.user.gid").read_text(), "tb.pat", "user")
        authority_cred = pat.GetCredential(pat_cred, "tb", "authority")
        facts = read_credential(authority_cred.encode()).credential
        assert facts.target_urn == "urn:publicid:IDN+tb+authority+sa" and "authority" in facts.privilege_names
        assert pat.Register({"hrn": "tb.newbie", "type": "user"}, [authority_cred]).startswith("-----BEGIN")
        (authority_record,) = alice.Resolve("tb", [alice_cred])
        assert authority_record["reg-pis"] == ["tb.pat"]
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
