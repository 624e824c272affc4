"""The modes of what the site makes (data directory, key directories, keys, GIDs, trusted roots, the SQLite calendar,
the log file) whatever the umask, and keys written whole: a crash while one is written leaves none, and ``init`` run
again completes the site (an empty key left by a crash of an earlier version is replaced, saying so)."""

from __future__ import annotations

import logging
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.registry.authority import AuthorityError, LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import Gid, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import load_trusted_roots, trust_root, verify_chain
from tests.conftest import REPO

#: The command line as an operator runs it, in a process of its own (its umask, its limits). Python ignores SIGXFSZ:
#: set back to its default, a write beyond the file size limit kills the process there, as a crash would.
CLI = (
    "import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); from sfa_omf.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def sfa_omf(
    *argv: str, umask: int = 0o022, max_file_bytes: int | None = None, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``sfa-omf ARGV`` under ``umask``; ``max_file_bytes``: the process is killed (SIGXFSZ, as by a crash) when
    it writes a file beyond that size; ``config``: $SFA_OMF_CONFIG."""

    def limit() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # (a .pyc written beyond the limit would kill it first)
    env.pop("SFA_OMF_CONFIG", None)
    if config is not None:
        env["SFA_OMF_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-c", CLI, *argv],
        cwd=REPO,
        env=env,
        umask=umask,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def certifies(gid: Gid, key: rsa.RSAPrivateKey) -> bool:
    """Whether the GID is the key's."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return gid.public_key_der == der


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_init_under_umask_000_makes_every_mode_exactly(tmp_path: Path) -> None:
    """A umask of 000 (a service manager's, a container's) made every directory 0777: any local user could add a
    trusted root (reloaded live), swap the authority's files or read the calendar. The modes are now init's own."""
    site = tmp_path / "site"
    done = sfa_omf("init", str(site), "--authority", "tb", umask=0)
    assert done.returncode == 0, done.stderr
    expected = {
        "": 0o750,
        "authority": 0o700,
        "authority/tb.pkey": 0o600,
        "authority/tb.gid": 0o644,
        "aggregate": 0o700,
        "aggregate/am.pkey": 0o600,
        "aggregate/am.gid": 0o644,
        "trusted_roots": 0o755,
        "trusted_roots/tb.gid": 0o644,
        "gids": 0o755,
        "gids/tb.alice.gid": 0o644,
        "users": 0o700,
        "users/alice": 0o700,
        "users/alice/sfi": 0o700,
        "users/alice/sfi/tb.alice.pkey": 0o600,
        "users/alice/sfi/id_ed25519": 0o600,
        "users/alice/sfi/tb.alice.user.gid": 0o644,
        "sfa-omf.sqlite": 0o600,
    }
    found = {name: mode(site / name) for name in expected}
    assert found == expected, {name: oct(value) for name, value in found.items() if value != expected[name]}
    world_writable = [str(path) for path in site.rglob("*") if mode(path) & stat.S_IWOTH]
    assert world_writable == []
    assert not [path.name for path in site.rglob("*.tmp")], "no temporary file is left"


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    """Only what init makes gets init's modes: a directory the operator made (here the data directory, 0711, and
    trusted_roots/, 0775) is left as it is."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "trusted_roots").mkdir()
    os.chmod(site, 0o711)
    os.chmod(site / "trusted_roots", 0o775)
    done = sfa_omf("init", str(site), "--authority", "tb", "--no-demo", umask=0)
    assert done.returncode == 0, done.stderr
    assert mode(site) == 0o711 and mode(site / "trusted_roots") == 0o775
    assert mode(site / "authority") == 0o700 and mode(site / "trusted_roots" / "tb.gid") == 0o644


def test_the_sqlite_calendar_and_its_wal_and_shm_are_the_owners_alone(tmp_path: Path) -> None:
    """Under the usual umask (022) SQLite made the calendar 0644: every local user could read the users' e-mail
    addresses, webhook URLs (with their tokens) and the outbox. It is made 0600 before SQLite opens it, and SQLite
    gives its -wal and -shm files the database file's mode (checked here on the real files, while they exist)."""
    previous = os.umask(0o022)
    try:
        path = tmp_path / "calendar.sqlite"
        database = Database(sqlite_url(str(path)))
        try:
            with database.engine.connect() as connection:
                connection.execute(text("CREATE TABLE secrets (hook TEXT)"))
                connection.execute(text("INSERT INTO secrets VALUES ('https://hooks.example/T0KEN')"))
                files = {name: mode(tmp_path / name) for name in ("calendar.sqlite", "calendar.sqlite-wal")}
                files["calendar.sqlite-shm"] = mode(tmp_path / "calendar.sqlite-shm")
        finally:
            database.dispose()
    finally:
        os.umask(previous)
    assert files == {"calendar.sqlite": 0o600, "calendar.sqlite-wal": 0o600, "calendar.sqlite-shm": 0o600}


def test_the_log_file_is_0640_also_when_made_again_after_rotation(tmp_path: Path) -> None:
    """serve's log file was 0666 under a umask of 000 (anyone could forge lines); made again after logrotate moved
    it, too. A log file that exists keeps its mode (logrotate's ``create`` may set one)."""
    log_file = tmp_path / "server.log"
    kept = tmp_path / "kept.log"
    kept.write_text("")
    os.chmod(kept, 0o600)
    script = (
        "import logging, os, sys\n"
        "from sfa_omf.cli_server import configure_logging\n"
        "log, kept = sys.argv[1:]\n"
        "configure_logging(log, 'INFO')\n"
        "logging.getLogger('sfa_omf.server').info('first')\n"
        "os.rename(log, log + '.1')\n"
        "logging.getLogger('sfa_omf.server').info('second')\n"
        "configure_logging(kept, 'INFO')\n"
        "logging.getLogger('sfa_omf.server').info('third')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(log_file), str(kept)],
        cwd=REPO,
        umask=0,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "first" in (tmp_path / "server.log.1").read_text() and "second" in log_file.read_text()
    assert mode(tmp_path / "server.log.1") == 0o640 and mode(log_file) == 0o640
    assert "third" in kept.read_text() and mode(kept) == 0o600


def test_trusting_a_root_makes_trusted_roots_0755_whatever_the_umask(tmp_path: Path) -> None:
    """trust add into a directory not made yet: 0755 and the root 0644, not 0777/0666 under a umask of 000 (a local
    user could drop a root there, which the server reloads); a renewal replaces the file with 0644 as well."""
    authority = LocalAuthority.create(str(tmp_path / "peer"), "peer")
    roots = tmp_path / "roots"
    previous = os.umask(0)
    try:
        added = trust_root(str(roots), authority.chain[0].pem().encode("ascii"), utcnow())
    finally:
        os.umask(previous)
    assert added.outcome == "added"
    assert mode(roots) == 0o755 and mode(Path(added.path)) == 0o644
    assert [name for name in os.listdir(roots) if name.startswith(".")] == []


def test_a_crash_while_init_writes_the_authority_key_leaves_no_key_and_init_completes(tmp_path: Path) -> None:
    """A process killed in the middle of writing the authority key (here by the file size limit, SIGXFSZ) left half
    a key, and init run again refused it for good ("exists already: refusing to overwrite an authority key"). The key
    is written to a temporary file and linked into place once whole: nothing is left under its name."""
    site = tmp_path / "site"
    crashed = sfa_omf("init", str(site), "--authority", "tb", "--no-demo", max_file_bytes=1000)
    assert crashed.returncode == -signal.SIGXFSZ, (crashed.returncode, crashed.stderr)
    assert not (site / "authority" / "tb.pkey").exists()
    again = sfa_omf("init", str(site), "--authority", "tb", "--no-demo")
    assert again.returncode == 0, again.stderr
    key = load_private_key_file(str(site / "authority" / "tb.pkey"))
    assert certifies(load_gid_chain_file(str(site / "authority" / "tb.gid"))[0], key)
    check = sfa_omf("config", "check", config=site / "sfa-omf.conf")
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout + check.stderr


def test_an_empty_authority_key_left_by_a_crash_is_replaced_saying_so(tmp_path: Path) -> None:
    """An empty key file (what writing in place left after a crash, by earlier versions) holds no key to lose: init
    replaces it, says so, and completes the site."""
    site = tmp_path / "site"
    (site / "authority").mkdir(parents=True)
    (site / "authority" / "tb.pkey").write_bytes(b"")
    done = sfa_omf("init", str(site), "--authority", "tb", "--no-demo")
    assert done.returncode == 0, done.stderr
    assert "tb.pkey was empty (left by a crash while it was written): a new authority key" in done.stderr
    key = load_private_key_file(str(site / "authority" / "tb.pkey"))
    assert certifies(load_gid_chain_file(str(site / "authority" / "tb.gid"))[0], key)
    assert (site / "sfa-omf.conf").exists()


def test_an_authority_key_without_its_gid_gets_one(tmp_path: Path) -> None:
    """A crash after the key was written, before its GID: init run again makes the GID for that key (and the root
    copy), where it refused to go on ("refusing to overwrite an authority key")."""
    site = tmp_path / "site"
    LocalAuthority.create(str(site), "tb")
    key = (site / "authority" / "tb.pkey").read_bytes()
    (site / "authority" / "tb.gid").unlink()
    (site / "trusted_roots" / "tb.gid").unlink()
    done = sfa_omf("init", str(site), "--authority", "tb", "--no-demo")
    assert done.returncode == 0, done.stderr
    assert (site / "authority" / "tb.pkey").read_bytes() == key
    authority = LocalAuthority.load(str(site), "tb")
    roots = load_trusted_roots(str(site / "trusted_roots"))
    chain = load_gid_chain_file(str(site / "aggregate" / "am.gid"))
    assert verify_chain(chain, roots, utcnow()).hrn == "tb" and certifies(authority.chain[0], authority.key)


def test_a_key_that_cannot_be_read_stays_refused_saying_what_to_do(tmp_path: Path) -> None:
    """A non-empty key that is not one may still be recovered: it is never replaced; init says to restore it."""
    site = tmp_path / "site"
    (site / "authority").mkdir(parents=True)
    (site / "authority" / "tb.pkey").write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow")
    done = sfa_omf("init", str(site), "--authority", "tb", "--no-demo")
    assert done.returncode == 2
    assert "holds no readable private key (not an unencrypted PEM RSA key)" in done.stderr
    assert "restore it from the backup" in done.stderr
    assert (site / "authority" / "tb.pkey").read_bytes() == b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow"
    assert not (site / "sfa-omf.conf").exists()


def test_an_empty_authority_key_whose_gid_exists_is_refused(tmp_path: Path) -> None:
    """An empty authority key on an initialised site is not replaced: its GID, and every GID it issued, certify the
    key that is lost; init says to restore it and writes nothing."""
    site = tmp_path / "site"
    init_directory(str(site), "tb", (), demo=False)
    (site / "authority" / "tb.pkey").write_bytes(b"")
    gid = (site / "authority" / "tb.gid").read_bytes()
    done = sfa_omf("init", str(site), "--authority", "tb", "--no-demo")
    assert done.returncode == 2
    assert "holds no readable private key (it is empty)" in done.stderr and "restore it from the backup" in done.stderr
    assert (site / "authority" / "tb.pkey").read_bytes() == b"" and (site / "authority" / "tb.gid").read_bytes() == gid


def test_an_empty_aggregate_key_is_replaced_with_its_gid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An empty aggregate/am.pkey was kept silently ("already there") and serve could not load it: it is replaced,
    with a GID issued by the authority for the new key."""
    site = tmp_path / "site"
    init_directory(str(site), "tb", (), demo=False)
    (site / "aggregate" / "am.pkey").write_bytes(b"")
    with caplog.at_level(logging.WARNING, "sfa_omf.registry"):
        report = init_directory(str(site), "tb", (), demo=False)
    assert "am.pkey was empty (left by a crash while it was written): a new aggregate key" in caplog.text
    key_path, gid_path = site / "aggregate" / "am.pkey", site / "aggregate" / "am.gid"
    assert str(key_path) in report.created and str(gid_path) in report.created
    chain = load_gid_chain_file(str(gid_path))
    assert certifies(chain[0], load_private_key_file(str(key_path)))
    assert verify_chain(chain, load_trusted_roots(str(site / "trusted_roots")), utcnow()).hrn == "tb"
    assert mode(key_path) == 0o600


def test_demo_user_keys_empty_after_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A demo user's empty SSH key is replaced (with its .pub); an empty sfi.py key is refused, not kept silently: the
    user's GID certifies the key that is lost, and init says how to add the user again."""
    site = tmp_path / "site"
    init_directory(str(site), "tb", ("alice",))
    sfi = site / "users" / "alice" / "sfi"
    old_public = (sfi / "id_ed25519.pub").read_text()
    (sfi / "id_ed25519").write_bytes(b"")
    with caplog.at_level(logging.WARNING, "sfa_omf.registry"):
        init_directory(str(site), "tb", ("alice",))
    assert "id_ed25519 was empty" in caplog.text
    assert (sfi / "id_ed25519").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (sfi / "id_ed25519.pub").read_text() != old_public and mode(sfi / "id_ed25519") == 0o600
    (sfi / "tb.alice.pkey").write_bytes(b"")
    with pytest.raises(AuthorityError, match=r"tb\.alice\.pkey is empty .*sfa-omf user remove tb\.alice"):
        init_directory(str(site), "tb", ("alice",))


def test_an_aggregate_key_without_its_gid_gets_one(tmp_path: Path) -> None:
    """A crash after aggregate/am.pkey was written, before am.gid: init run again kept the key and made no GID (the
    aggregate could not serve, and init said nothing was missing). It issues the GID for the key kept."""
    site = tmp_path / "site"
    init_directory(str(site), "tb", (), demo=False)
    key = (site / "aggregate" / "am.pkey").read_bytes()
    (site / "aggregate" / "am.gid").unlink()
    report = init_directory(str(site), "tb", (), demo=False)
    assert str(site / "aggregate" / "am.gid") in report.created
    assert (site / "aggregate" / "am.pkey").read_bytes() == key
    chain = load_gid_chain_file(str(site / "aggregate" / "am.gid"))
    assert certifies(chain[0], load_private_key_file(str(site / "aggregate" / "am.pkey")))
    assert verify_chain(chain, load_trusted_roots(str(site / "trusted_roots")), utcnow()).hrn == "tb"
