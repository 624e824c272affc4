"""The operator's commands, as an operator runs them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.config import read_config
from tests.conftest import REPO, DemoPki
from tests.postgres import empty_postgres

POSTGRES_URL = os.environ.get("SFA_OMF_TEST_POSTGRES_URL")


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


def test_init_for_a_real_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hostname, ports and --no-demo: no demo user or slice; users added later get an sfi_config on the public name
    and the chosen ports."""
    site = tmp_path / "site"
    code, out, err = run(
        capsys,
        "init",
        str(site),
        "--authority",
        "lab",
        "--hostname",
        "am.lab.example.org",
        "--registry-port",
        "22345",
        "--aggregate-port",
        "22346",
        "--no-demo",
    )
    assert code == 0, err
    assert "registry https://am.lab.example.org:22345/, aggregate https://am.lab.example.org:22346/" in out
    assert "listening on 0.0.0.0" in out
    settings = read_config(str(site / "sfa-omf.conf"), environ={})
    assert (settings.hostname, settings.registry_port, settings.aggregate_port) == ("am.lab.example.org", 22345, 22346)
    assert (settings.registry_host, settings.aggregate_host) == ("0.0.0.0", "0.0.0.0")
    assert not (site / "users").exists() and not (site / "gids" / "lab.demo.gid").exists()
    assert run(capsys, "user", "list", "--config", str(site / "sfa-omf.conf"), "--json")[1].strip() == "[]"
    assert run(capsys, "user", "add", "ann", "--config", str(site / "sfa-omf.conf"))[0] == 0
    sfi_config = (site / "users" / "ann" / "sfi" / "sfi_config").read_text()
    assert "registry = http://am.lab.example.org:22345/" in sfi_config
    assert "sm = http://am.lab.example.org:22346/" in sfi_config


def test_init_with_bind_and_demo_users_uses_the_hostname(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--hostname", "localhost", "--aggregate-port", "23346")
    assert code == 0, err
    settings = read_config(str(tmp_path / "d" / "sfa-omf.conf"), environ={})
    assert (settings.aggregate_host, settings.hostname) == ("127.0.0.1", "localhost")
    sfi_config = (tmp_path / "d" / "users" / "alice" / "sfi" / "sfi_config").read_text()
    assert "sm = http://localhost:23346/" in sfi_config and "registry = http://localhost:12345/" in sfi_config


def test_init_rerun_reads_the_directory_authority(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", str(tmp_path / "d"), "--authority", "lab")[0] == 0
    code, out, err = run(capsys, "init", str(tmp_path / "d"), "--user", "ben", "--hostname", "x.example.org")
    assert code == 0, err
    assert out.startswith("authority lab in ") and "users/ben/sfi" in out
    assert "its configuration is kept; change --hostname in" in err
    assert read_config(str(tmp_path / "d" / "sfa-omf.conf"), environ={}).hostname == "127.0.0.1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--registry-port", "70000"], "--registry-port 70000: a port is a number from 1 to 65535"),
        (["--aggregate-port", "12345"], "the registry and the aggregate both on port 12345"),
        (["--no-demo", "--user", "ann"], "--user makes demo users: leave it out with --no-demo"),
        (
            ["--database-url", "postgresql+psycopg://u:secret@127.0.0.1:1/x"],
            "--database-url postgresql+psycopg://u:***@127.0.0.1:1/x: cannot reach it",
        ),
    ],
)
def test_init_refusals_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code, out, err = run(capsys, "init", str(tmp_path / "d"), *options)
    assert (code, out) == (2, "")
    assert err.startswith("sfa-omf: ") and message in err and "secret" not in err
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(not POSTGRES_URL, reason="SFA_OMF_TEST_POSTGRES_URL is not set (scripts/postgres.sh)")
def test_init_on_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert POSTGRES_URL
    empty_postgres()  # a new site's database: one holding another authority's registry is refused
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--database-url", POSTGRES_URL, "--no-demo")
    assert code == 0, err
    settings = read_config(str(tmp_path / "d" / "sfa-omf.conf"), environ={})
    assert settings.calendar_url == POSTGRES_URL
    assert run(capsys, "config", "check", "--settings-only", str(tmp_path / "d" / "sfa-omf.conf"))[0] == 0
    from sfa_omf.calendar.database import Database, head_revision

    assert Database(POSTGRES_URL).schema_revision() == head_revision()


def test_messages_carry_no_internal_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.cred").write_text("<signed-credential/>")
    argv = ["credential", "verify", "--trusted-roots", str(tmp_path), str(tmp_path / "x.cred"), "--target", "nope"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err == "sfa-omf: --target must be a URN, got 'nope'\n"  # not "bad_args: ..."
    code, _, err = run(capsys, "credential", "verify", "--trusted-roots", str(tmp_path), str(tmp_path / "absent"))
    assert code == 2 and err == f"sfa-omf: {tmp_path / 'absent'}: No such file or directory\n"


def test_a_command_group_alone_shows_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: sfa-omf node [-h]") and "{add,list,remove,import,set-state," in out


def test_config_check_says_a_missing_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "absent.conf")]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot read") == 1 and "it does not exist" in err


def test_credentials_are_not_printed_on_a_terminal(pki: DemoPki, tmp_path: Path) -> None:
    """Run in a pseudo-terminal: without -o, delegate refuses (and writes nothing); redirected, it prints."""
    import pty

    alice = pki.users["alice"]
    argv = [
        sys.executable,
        "-m",
        "sfa_omf.cli",
        "credential",
        "delegate",
        str(alice.sfi_dir / "testbed.alice-testbed.demo.slice.cred"),
        "--key",
        str(alice.sfi_dir / "testbed.alice.pkey"),
        "--gid",
        str(alice.sfi_dir / "testbed.alice.user.gid"),
        "--to",
        str(pki.users["bob"].sfi_dir / "testbed.bob.user.gid"),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    controller, terminal = pty.openpty()
    done = subprocess.run(argv, stdout=terminal, stderr=subprocess.PIPE, env=environment, timeout=60, text=True)
    os.close(terminal)
    os.close(controller)
    assert done.returncode == 2
    assert done.stderr == "sfa-omf: a credential is XML: give -o FILE, or redirect the output (> FILE)\n"
    piped = subprocess.run(argv, capture_output=True, env=environment, timeout=60, text=True)
    assert piped.returncode == 0 and piped.stdout.startswith("<?xml")


def test_rspec_types_match_the_library() -> None:
    from rspec.validate import KINDS
    from sfa_omf.cli_rspec import RSPEC_TYPES

    assert RSPEC_TYPES == KINDS


def test_probe_without_a_server_fails_one_line_per_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(docs/operators.md runs probe against a running server: tests/test_operators_doc.py.)"""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(str(probe.getsockname()[1]))
    init = ["init", str(tmp_path / "d"), "--registry-port", ports[0], "--aggregate-port", ports[1]]
    assert main(init) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "probe", "--config", str(tmp_path / "d" / "sfa-omf.conf"), "--timeout", "5")
    assert code == 1
    assert out.splitlines() == [
        f"registry https://127.0.0.1:{ports[0]}/: no answer ([Errno 111] Connection refused); is sfa-omf serve "
        "running? (systemctl status sfa-omf)",
        f"aggregate https://127.0.0.1:{ports[1]}/: no answer ([Errno 111] Connection refused); is sfa-omf serve "
        "running? (systemctl status sfa-omf)",
    ]


def test_gid_show_prints_the_fingerprint_to_check_out_of_band(pki: DemoPki, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gid", "show", str(pki.directory / "authority" / "testbed.gid"))
    assert code == 0
    (line,) = [line for line in out.splitlines() if "sha256_fingerprint" in line]
    assert line.split()[-1] == pki.authority.chain[0].fingerprint


LOADED_HEAVY = """
import contextlib, io, sys
from sfa_omf.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
heavy = ("twisted", "sqlalchemy", "alembic", "xmlsec", "lxml", "cryptography", "OpenSSL")
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & set(heavy))))
"""


def _heavy_modules_loaded(*argv: str) -> set[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", LOADED_HEAVY, *argv], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_light_commands_do_not_import_heavy_libraries(pki: DemoPki, tmp_path: Path) -> None:
    """benchmarks/cli_startup.py measures the time; this keeps the imports from creeping back."""
    assert _heavy_modules_loaded("--help") == set()
    assert _heavy_modules_loaded("node") == set()
    alice = pki.users["alice"]
    verify = [
        "credential",
        "verify",
        "--trusted-roots",
        str(pki.directory / "trusted_roots"),
        str(alice.sfi_dir / "testbed.alice.user.cred"),
    ]
    assert _heavy_modules_loaded(*verify) <= {"cryptography", "lxml", "xmlsec"}
    assert main(["init", str(tmp_path / "d")]) == 0
    assert _heavy_modules_loaded("node", "list", "--config", str(tmp_path / "d" / "sfa-omf.conf")) == {"sqlalchemy"}
