"""What an operator meets first on a fresh machine: the configuration and the command line. Each case is a mistake an
operator makes (a misspelt setting, a key restored from the wrong backup, a ``postgres://`` URL, one port for both
servers, a bad authority name); each gets one line that says what to do, a meaningful exit status, no traceback, and
nothing half-written. ``serve`` runs as a real subprocess, as systemd runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database, head_revision, sqlite_url
from sfa_omf.cli import main
from tests import test_preflight
from tests.calendar.test_schema_check import migrate_to
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
lab = test_preflight.lab  # the fixture: an initialised directory of authority lab on free ports, no SFA_* variable
# A hang is a failure: generous, so that a loaded machine does not fail the test.
EXIT_TIMEOUT_S = 60


def sfa_omf(*argv: str, cwd: Path | None = None, **environment: str) -> subprocess.CompletedProcess[str]:
    """``sfa-omf ARGV`` in a process of its own, without the SFA_* variables of the machine running the tests."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
    env.update(PYTHONPATH=str(REPO), **environment)
    return subprocess.run(
        [sys.executable, "-m", "sfa_omf.cli", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line of a command that failed with ``code``, checked to be no traceback."""
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# --- serve -----------------------------------------------------------------------------------------------------


def test_serve_refuses_an_aggregate_key_that_is_not_its_gids(lab: Path) -> None:
    """A key restored from another backup: each file reads, TLS cannot use the pair (it was a pyOpenSSL traceback)."""
    key = lab / "aggregate" / "am.pkey"
    key.write_bytes((lab / "authority" / "lab.pkey").read_bytes())
    line = one_line_error(sfa_omf("serve", "--config", str(lab / "sfa-omf.conf")), 1)
    assert line == (
        f"sfa-omf: cannot start: the aggregate's private key {key} is not the key of {lab}/aggregate/am.gid (the GID "
        "was made for another key): put back the pair that belongs together from a backup"
    )


def test_a_misspelt_setting_is_named_by_commands_and_in_the_servers_log(lab: Path) -> None:
    """``thread = 4`` is not ``threads``: commands and the server said nothing and used 8. Now a command warns on
    standard error, and the server's log (the journal) names it once, before it serves."""
    config = lab / "sfa-omf.conf"
    config.write_text(config.read_text(encoding="utf-8").replace("threads = 8", "thread = 4"), encoding="utf-8")
    line = config.read_text(encoding="utf-8").splitlines().index("thread = 4") + 1  # (init writes every setting)
    done = sfa_omf("node", "list", "--config", str(config))
    assert done.returncode == 0
    assert done.stderr == (
        f"sfa-omf: warning: {config}:{line}: [sfa_omf] thread is not a known setting; closest: [sfa_omf] threads "
        "(SFA_OMF_THREADS) (sfa-omf config check lists every problem)\n"
    )
    log = lab / "serve.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
    environment.update(PYTHONPATH=str(REPO), SFA_OMF_LOG_FILE=str(log))
    command = [sys.executable, "-m", "sfa_omf.cli", "serve", "--config", str(config)]
    with subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            for _ in range(2 * EXIT_TIMEOUT_S):  # bounded: half a second each
                if log.exists() and "serving AM API v3" in log.read_text(encoding="utf-8"):
                    break
                try:
                    server.wait(timeout=0.5)
                    break  # it stopped: the assertions below say why
                except subprocess.TimeoutExpired:
                    pass
        finally:
            server.terminate()
            server.wait(timeout=EXIT_TIMEOUT_S)
    text = log.read_text(encoding="utf-8")
    assert "serving AM API v3" in text, text
    warnings = [line for line in text.splitlines() if "is not a known setting" in line]
    assert len(warnings) == 1, text
    assert " WARNING sfa_omf.server configuration: " in warnings[0]
    assert "[sfa_omf] thread is not a known setting; closest: [sfa_omf] threads" in warnings[0]


def test_one_port_for_both_servers_is_named_as_such(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """config check said "no problems", serve blamed "another program" for its own registry."""
    port = free_port()
    environment = {"SFA_REGISTRY_PORT": str(port), "SFA_AGGREGATE_PORT": str(port)}
    expected = (
        f"the registry (127.0.0.1:{port}) and the aggregate (127.0.0.1:{port}) would listen on the same port: give "
        "them different ones ([sfa_registry] port, [sfa_aggregate] port; SFA's are 12345 and 12346)"
    )
    line = one_line_error(sfa_omf("serve", "--config", str(lab / "sfa-omf.conf"), **environment), 1)
    assert line == f"sfa-omf: cannot start: {expected}"
    done = sfa_omf("config", "check", str(lab / "sfa-omf.conf"), **environment)
    assert done.returncode == 1
    assert [line for line in done.stdout.splitlines() if line.startswith("problem: ")] == [f"problem: {expected}"]


# --- the database URL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://sfa:secret@127.0.0.1/calendar", "write postgresql+psycopg://... (not postgres://)"),
        ("postgresql://sfa:secret@127.0.0.1/calendar", "write postgresql+psycopg://... (not postgresql://)"),
        ("mysql://sfa:secret@127.0.0.1/calendar", "the calendar is an SQLite or a PostgreSQL database, not mysql"),
    ],
)
def test_a_database_url_sfa_omf_cannot_use_is_one_line(lab: Path, url: str, expected: str) -> None:
    """``postgresql://`` means psycopg2 to SQLAlchemy, not installed: every command was a ModuleNotFoundError
    traceback, config check too."""
    config = str(lab / "sfa-omf.conf")
    for argv, code in ((["node", "list", "--config", config], 2), (["serve", "--config", config], 2)):
        line = one_line_error(sfa_omf(*argv, SFA_OMF_DATABASE_URL=url), code)
        assert expected in line and "secret" not in line
    done = sfa_omf("config", "check", config, SFA_OMF_DATABASE_URL=url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert expected in done.stdout


def test_init_refuses_a_database_url_it_cannot_use_and_creates_nothing(tmp_path: Path) -> None:
    for url, expected in (
        ("garbage", "SQLAlchemy cannot parse it"),
        ("postgres://sfa:secret@127.0.0.1/calendar", "write postgresql+psycopg://"),
    ):
        line = one_line_error(sfa_omf("init", str(tmp_path / "site"), "--database-url", url), 2)
        assert expected in line and line.endswith("nothing was created") and "secret" not in line
        assert not (tmp_path / "site").exists()


def test_init_writes_a_relative_sqlite_url_as_the_file_it_made(tmp_path: Path) -> None:
    """``--database-url sqlite:///cal.sqlite`` is the operator's working directory's file; the configuration kept
    the relative URL, which each later command read against its own working directory (another, empty database)."""
    done = sfa_omf("init", "site", "--database-url", "sqlite:///cal.sqlite", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"database_url = sqlite:///{tmp_path}/cal.sqlite\n" in (tmp_path / "site" / "sfa-omf.conf").read_text()
    assert Database(sqlite_url(str(tmp_path / "cal.sqlite"))).schema_revision() == head_revision()


def test_init_with_an_authority_name_it_refuses_leaves_no_directory(tmp_path: Path) -> None:
    for argv in (["init", str(tmp_path / "site")], ["quickstart", str(tmp_path / "site")]):
        line = one_line_error(sfa_omf(*argv, "--authority", "a..b"), 2)
        assert line == "sfa-omf: HRN 'a..b' has an empty part"
        assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("authority", ["my lab", "l\u202eab"], ids=["space", "U+202E"])
def test_init_refuses_an_authority_name_no_urn_may_hold_before_writing_anything(tmp_path: Path, authority: str) -> None:
    """Its URN would be in the authority's own root, which the trust layer refuses: init wrote the files, then
    failed on that root, leaving a half-made directory."""
    for argv in (["init", str(tmp_path / "site")], ["quickstart", str(tmp_path / "site")]):
        line = one_line_error(sfa_omf(*argv, "--authority", authority), 2)
        assert line.startswith(f"sfa-omf: the authority HRN (--authority) {authority!r}: character "), line
        assert line.endswith(": give one without it"), line
        assert not (tmp_path / "site").exists()


def test_a_site_whose_authority_name_no_urn_may_hold_is_refused_by_every_command_naming_the_setting(
    tmp_path: Path,
) -> None:
    """A site an earlier version made under such a name, after the upgrade."""
    config = tmp_path / "sfa-omf.conf"
    config.write_text(f"[sfa]\ninterface_hrn = my lab\ndata_dir = {tmp_path}\n", encoding="utf-8")
    line = one_line_error(sfa_omf("node", "list", "--config", str(config)), 2)
    assert line.startswith(f"sfa-omf: invalid configuration: {config}:2: [sfa] interface_hrn 'my lab': "), line
    assert "an authority cannot be renamed: make the site again under a name without it" in line, line
    assert "the authority that issued it" not in line


# --- relative paths --------------------------------------------------------------------------------------------


def test_a_site_with_relative_paths_works_from_any_directory(lab: Path, tmp_path: Path) -> None:
    """``data_dir = .`` in the site's file: the server checked (and would have used) the working directory's keys,
    so the same file worked from the site's directory and failed from / (where systemd starts it)."""
    config = lab / "sfa-omf.conf"
    text = config.read_text(encoding="utf-8")
    text = text.replace(f"data_dir = {lab}\n", "data_dir = .\n").replace(f"trusted_roots = {lab}/", "trusted_roots = ")
    text = text.replace(f"database_url = sqlite:///{lab}/", "database_url = sqlite:///")
    assert str(lab) not in text
    config.write_text(text, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = sfa_omf("config", "check", str(config), cwd=elsewhere)
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[-1] == "no problems"


# --- commands on a database at another migration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "list"],
        ["image", "show", "debian"],
        ["instance", "list"],
        ["calendar", "feed-url", "urn:publicid:IDN+lab+user+alice"],
        ["calendar", "feed-revoke", "urn:publicid:IDN+lab+user+alice"],
        ["node", "list"],
        ["pool", "list"],
        ["lease", "list"],
        ["account", "list"],
        ["node", "add", "node9"],
        ["node", "set-state", "node1", "maintenance"],
        ["notify", "subscribe", "urn:publicid:IDN+lab+user+alice", "webhook", "https://hooks.example.org/alice"],
        ["notify", "unsubscribe", "urn:publicid:IDN+lab+user+alice", "email"],
        ["notify", "status"],
        ["node", "invite", "--pool", "default"],
        ["node", "agents"],
        ["node", "stage-out", "node1", "lease-1", "--to", "staged-out"],
    ],
)
def test_image_and_feed_commands_refuse_an_older_schema(
    lab: Path, tmp_path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between installing a newer sfa-omf and ``db upgrade``: "no such column: repository_image.private", or a feed
    token written into the older schema. Now: what to run, exit 2, the schema left as it is."""
    url = sqlite_url(str(tmp_path / "older.sqlite"))
    migrate_to(url, "0016")
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    code = main([*argv, "--config", str(lab / "sfa-omf.conf")])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert (
        f"is at migration 0016, this sfa-omf needs {head_revision()}: stop every `sfa-omf serve` on every host first"
        in err
    )
    assert "then run `sfa-omf db upgrade`, then start them" in err
    assert Database(url).schema_revision() == "0016"


# --- arguments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "--timeout", "0"],
        ["probe", "--timeout", "-1"],
        ["probe", "--timeout", "nan"],
        ["credential", "issue", "--dir", "DIR", "--owner", "lab.alice", "--days", "-5"],
        ["credential", "issue", "--dir", "DIR", "--owner", "lab.alice", "--days", "0"],
        ["credential", "issue", "--dir", "DIR", "--owner", "lab.alice", "--days", "inf"],
        ["credential", "issue", "--dir", "DIR", "--owner", "lab.alice", "--days", "1e9"],
        ["rspec", "validate", "--max-bytes", "0", "request.xml"],
        ["rspec", "validate", "--max-bytes", "-1", "request.xml"],
    ],
)
def test_out_of_range_numbers_are_usage_errors(
    lab: Path, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--days -5 issued a credential expired already (exit 0), --days inf was an OverflowError traceback, --timeout 0
    said the server was down, --max-bytes 0 silently meant the default."""
    argv = [str(lab) if word == "DIR" else word for word in argv]
    output = tmp_path / "credential.xml"
    with pytest.raises(SystemExit) as exit_status:
        main([*argv, *(["-o", str(output)] if argv[0] == "credential" else [])])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --" in err and "Traceback" not in err
    assert not output.exists()


def test_probe_without_the_aggregates_identity_says_what_to_run(lab: Path) -> None:
    (lab / "aggregate" / "am.pkey").unlink()
    line = one_line_error(sfa_omf("probe", "--config", str(lab / "sfa-omf.conf")), 2)
    assert line == (
        f"sfa-omf: probe presents the aggregate's certificate, and the aggregate's private key {lab}/aggregate/am.pkey "
        f"does not exist: run sfa-omf init {lab} --authority lab to create it"
    )


@pytest.mark.parametrize("group", ["calendar", "image", "instance"])
def test_a_command_group_alone_prints_its_own_commands(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    assert capsys.readouterr().out.startswith(f"usage: sfa-omf {group} [-h]")


def test_signing_key_with_a_mistyped_key_directory_makes_nothing(lab: Path, tmp_path: Path) -> None:
    """``--key`` naming no directory made it, and a new key there, and printed a line for it, which matches no plan
    the aggregate signs. A key in an existing directory is made there on first use, as the OAR rig's set-up needs."""
    missing = tmp_path / "typo" / "plan-signing.key"
    done = sfa_omf("instance", "signing-key", "--key", str(missing), "--config", str(lab / "sfa-omf.conf"))
    line = one_line_error(done, 2)
    assert line.startswith(f"sfa-omf: --key {missing}: no such directory {tmp_path / 'typo'}")
    assert not (tmp_path / "typo").exists()
    made = tmp_path / "plan-signing.key"
    done = sfa_omf("instance", "signing-key", "--key", str(made), "--config", str(lab / "sfa-omf.conf"))
    assert done.returncode == 0 and done.stdout.startswith("sfa-omf-plan-signer ") and made.is_file()


def test_user_add_with_a_public_key_file_that_is_none_names_it(lab: Path, tmp_path: Path) -> None:
    """It answered cryptography's "Unable to load PEM file. See https://... MalformedFraming", naming no file."""
    key = tmp_path / "bob.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE bob@laptop\n", encoding="utf-8")  # an SSH key, not PEM
    done = sfa_omf("user", "add", "bob", "--public-key", str(key), "--config", str(lab / "sfa-omf.conf"))
    assert one_line_error(done, 2) == (
        f"sfa-omf: {key}: not a PEM public key (-----BEGIN PUBLIC KEY-----) nor a certificate; openssl rsa -in KEY "
        "-pubout writes one"
    )
    assert not (lab / "users" / "bob").exists()


def test_init_refuses_every_address_as_the_advertised_hostname(tmp_path: Path) -> None:
    """``--hostname 0.0.0.0`` (meant as "listen everywhere") was written as the name GetVersion and every sfi_config
    advertise; config check found it only afterwards."""
    line = one_line_error(sfa_omf("init", str(tmp_path / "site"), "--hostname", "0.0.0.0"), 2)
    assert line.startswith("sfa-omf: --hostname 0.0.0.0 means 'every address', which no peer can call")
    assert not (tmp_path / "site").exists()


def test_credential_issue_over_an_existing_file_issues_no_gid(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``-o`` naming an existing file was refused only at the end, after a GID for the new slice had been issued."""
    assert main(["user", "add", "ann", "--config", str(lab / "sfa-omf.conf")]) == 0
    existing = lab / "exp.cred"
    existing.write_text("kept\n", encoding="utf-8")
    argv = ["credential", "issue", "--dir", str(lab), "--owner", "lab.ann", "--target", "lab.exp", "--type", "slice"]
    capsys.readouterr()
    assert main([*argv, "-o", str(existing)]) == 2
    assert capsys.readouterr().err.startswith(f"sfa-omf: -o {existing}: the file exists")
    assert existing.read_text(encoding="utf-8") == "kept\n"
    assert not (lab / "gids" / "lab.exp.gid").exists()
