"""The operator's commands, as an operator runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sfa_omf.cli import main
from tests.conftest import DemoPki


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_prints_where_things_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "init", str(tmp_path / "d"), "--authority", "lab", "--user", "ann", "--user", "ben")
    assert code == 0
    assert "authority lab" in out and "users/ann/sfi" in out and "users/ben/sfi" in out
    assert "users/ann/sfi/id_ed25519" in out, "where the demo user's SSH key is"
    code, out, _ = run(capsys, "init", str(tmp_path / "d"), "--authority", "lab", "--user", "ann")
    assert code == 0 and "0 files created" in out
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--authority", "other")
    assert code == 2 and "already holds authority 'lab'" in err


def test_credential_verify_valid(pki: DemoPki, capsys: pytest.CaptureFixture[str]) -> None:
    alice = pki.users["alice"]
    code, out, _ = run(
        capsys,
        "credential",
        "verify",
        "--trusted-roots",
        str(pki.directory / "trusted_roots"),
        "--caller",
        str(alice.sfi_dir / "testbed.alice.user.gid"),
        "--target",
        pki.slice_urn,
        "--operation",
        "createsliver",
        str(alice.sfi_dir / "testbed.alice-testbed.demo.slice.cred"),
    )
    report = json.loads(out)
    assert code == 0
    assert report["valid"] is True and report["reason"] is None and report["geni_code"] == 0
    assert report["owner_urn"] == "urn:publicid:IDN+testbed+user+alice"
    assert report["target_urn"] == pki.slice_urn
    assert report["privileges"] == ["refresh", "embed", "bind", "control", "info"]
    assert report["delegated"] is False
    assert report["expires"].endswith("Z")


@pytest.mark.parametrize(
    ("extra", "reason", "geni_code"),
    [
        (["--caller", "urn:publicid:IDN+testbed+user+bob"], "owner_mismatch", 22),
        (["--target", "urn:publicid:IDN+testbed+slice+other"], "target_mismatch", 22),
        (["--operation", "register"], "insufficient_privileges", 3),
        (["--at", "2099-01-01T00:00:00Z"], "certificate_expired", 15),
        (["--at", "+60d"], "credential_expired", 21),
    ],
)
def test_credential_verify_says_why(
    pki: DemoPki, capsys: pytest.CaptureFixture[str], extra: list[str], reason: str, geni_code: int
) -> None:
    alice = pki.users["alice"]
    code, out, _ = run(
        capsys,
        "credential",
        "verify",
        "--trusted-roots",
        str(pki.directory / "trusted_roots"),
        *extra,
        str(alice.sfi_dir / "testbed.alice-testbed.demo.slice.cred"),
    )
    report = json.loads(out)
    assert code == 1
    assert (report["valid"], report["reason"], report["geni_code"]) == (False, reason, geni_code)
    assert report["message"]


def test_credential_verify_untrusted_root(pki: DemoPki, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "roots"
    empty.mkdir()
    code, out, _ = run(
        capsys,
        "credential",
        "verify",
        "--trusted-roots",
        str(empty),
        str(pki.users["alice"].sfi_dir / "testbed.alice.user.cred"),
    )
    report = json.loads(out)
    assert code == 1 and report["reason"] == "untrusted_chain" and report["geni_code"] == 23


def test_credential_verify_garbage(pki: DemoPki, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.cred"
    junk.write_text("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>")
    code, out, _ = run(
        capsys, "credential", "verify", "--trusted-roots", str(pki.directory / "trusted_roots"), str(junk)
    )
    report = json.loads(out)
    assert code == 1 and report["reason"] == "hostile_xml" and report["geni_code"] == 20


def test_issue_and_delegate(pki: DemoPki, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A private copy: issuing writes a new slice GID into the authority directory.
    directory = tmp_path / "auth"
    shutil.copytree(pki.directory, directory)
    issued = tmp_path / "exp.cred"
    code, _, err = run(
        capsys,
        "credential",
        "issue",
        "--dir",
        str(directory),
        "--owner",
        "testbed.alice",
        "--target",
        "testbed.exp",
        "--type",
        "slice",
        "--days",
        "2",
        "-o",
        str(issued),
    )
    assert code == 0, err
    alice_sfi = directory / "users" / "alice" / "sfi"
    delegated = tmp_path / "bob.cred"
    code, _, err = run(
        capsys,
        "credential",
        "delegate",
        str(issued),
        "--key",
        str(alice_sfi / "testbed.alice.pkey"),
        "--gid",
        str(alice_sfi / "testbed.alice.user.gid"),
        "--to",
        str(directory / "gids" / "testbed.bob.gid"),
        "--privileges",
        "info",
        "-o",
        str(delegated),
    )
    assert code == 0, err
    code, out, _ = run(
        capsys,
        "credential",
        "verify",
        "--trusted-roots",
        str(directory / "trusted_roots"),
        "--caller",
        "urn:publicid:IDN+testbed+user+bob",
        "--target",
        "urn:publicid:IDN+testbed+slice+exp",
        "--operation",
        "listnodes",
        str(delegated),
    )
    report = json.loads(out)
    assert code == 0 and report["delegated"] is True and report["privileges"] == ["info"]
    code, _, err = run(
        capsys,
        "credential",
        "issue",
        "--dir",
        str(directory),
        "--owner",
        "testbed.alice",
        "--target",
        "testbed.nope",
    )
    assert code == 2 and "--type slice" in err


def test_gid_show(pki: DemoPki, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(pki.users["alice"].sfi_dir / "testbed.alice.user.gid")
    code, out, _ = run(capsys, "gid", "show", path)
    assert code == 0
    assert "urn:publicid:IDN+testbed+user+alice" in out and "issuer 1: CN=testbed" in out
    code, out, _ = run(capsys, "gid", "show", "--json", path)
    facts = json.loads(out)
    assert [fact["ca"] for fact in facts] == [False, True]
    assert facts[0]["email"] == "alice@testbed.example.org"


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = shutil.which("sfa-omf") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "sfa-omf")
    result = subprocess.run([script, "init", str(tmp_path / "x")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x" / "users" / "alice" / "sfi" / "sfi_config").exists()


def test_credential_verify_checks_a_caller_gid_chain(
    pki: DemoPki, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A caller given as a GID file is checked as the AM would check a TLS client: its chain must be trusted."""
    from sfa_omf.trust.pki import create_gid, new_private_key

    key = new_private_key()
    stranger = tmp_path / "stranger.gid"
    stranger.write_text(create_gid("urn:publicid:IDN+testbed+user+alice", key.public_key(), key).pem())
    code, out, _ = run(
        capsys,
        "credential",
        "verify",
        "--trusted-roots",
        str(pki.directory / "trusted_roots"),
        "--caller",
        str(stranger),
        str(pki.users["alice"].sfi_dir / "testbed.alice.user.cred"),
    )
    report = json.loads(out)
    assert code == 1 and report["reason"] == "caller_untrusted" and report["geni_code"] == 3
