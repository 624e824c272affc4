"""What the configuration shows and who may change it.

- A webhook (``[sfa_notify] operators``) is shown by ``config check`` as the notifier shows it: its origin and a
  digest of the whole URL, never its path or query (which often hold a token) nor its password; delivery failures
  in the log and the outbox name it the same way.
- ``write_config`` makes the file 0644 whatever the umask (it was 0666 & ~umask: 0666 under umask 000, so any local
  user could set ``dns_reload``, a command the server runs), 0600 when it holds a secret.
- ``config check`` names a configuration file, data, trusted roots or key directory (or what they hold) that another
  local user could change, with the chmod or chown that stops it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import Message, Outbox
from sfa_omf.cli import main
from sfa_omf.config import Settings, hide_webhooks, read_config, write_config
from sfa_omf.notify.channels import DeliveryError, post_webhook
from sfa_omf.notify.notifier import Notifier, NotifySettings, shown_key
from tests.calendar.conftest import fresh_database
from tests.ports import free_port
from tests.test_preflight import lab  # noqa: F401 (an initialised directory, the fixture)

PASSWORD, TOKEN = "OPSECRET6", "QTOKEN7"
HOOK = f"https://hook:{PASSWORD}@hooks.example.org/x?token={TOKEN}"


def digest(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands read os.environ: without the SFA_* settings of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SFA_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)


def site_file(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "site.conf"
    path.write_text("\n".join(["[sfa]", "interface_hrn = testbed", f"data_dir = {tmp_path}", *lines]) + "\n")
    return str(path)


# -- 1. webhooks are shown by their origin ------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_environment")
def test_config_check_shows_a_webhook_by_its_origin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the fix the line showed https://hook:***@hooks.example.org/x?token=QTOKEN7."""
    path = site_file(tmp_path, "[sfa_notify]", f"operators = {HOOK}, ops@example.org")
    assert main(["config", "check", "--settings-only", path]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and TOKEN not in out and "/x" not in out
    (row,) = [line for line in out.splitlines() if line.startswith("[sfa_notify] operators")]
    assert f"https://hooks.example.org#{digest(HOOK)}, ops@example.org" in row, row
    # The notifier's form: what its logs and keys name the same webhook by.
    message = Message(f"e1:webhook:{HOOK}", "started", "webhook", HOOK, {})
    assert shown_key(message) == f"e1:webhook:{hide_webhooks(HOOK)}"


@pytest.mark.usefixtures("clean_environment")
def test_a_refused_webhook_is_named_by_its_origin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An operators' webhook the outbox would refuse (too long) is named without its path (before: its first 80
    characters, token included)."""
    long_hook = f"https://hooks.example.org/{TOKEN}?t=" + "x" * 600
    path = site_file(tmp_path, "[sfa_notify]", f"operators = ops@example.org {long_hook}")
    assert main(["config", "check", "--settings-only", path]) == 1
    out = capsys.readouterr().out
    assert TOKEN not in out
    problem = out.splitlines()[-1]
    assert problem == (
        f"problem: {path}:5: [sfa_notify] operators: the webhook https://hooks.example.org#{digest(long_hook)} "
        f"({len(long_hook)} characters): a webhook URL has at most 500 characters, not {len(long_hook)}"
    )


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = fresh_database("sqlite", tmp_path)
    yield database
    database.dispose()


def test_delivery_failures_name_a_webhook_by_its_origin(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    """The log and the outbox's last_error of a failed webhook (a refused port on 127.0.0.1) hold no path or query."""
    port = free_port()  # nothing listens there: refused
    hook = f"http://127.0.0.1:{port}/hooks/{TOKEN}?token={TOKEN}"
    Outbox(database).enqueue([Message(f"e1:webhook:{hook}", "started", "webhook", hook, {"event": "started"})])
    with caplog.at_level(logging.INFO, logger="sfa_omf"):
        assert Notifier(database, NotifySettings()).deliver() == 0
    assert caplog.text and TOKEN not in caplog.text, caplog.text
    assert f"http://127.0.0.1:{port}#{digest(hook)}" in caplog.text
    from sqlalchemy import select

    from sfa_omf.calendar.models import NotifyOutbox

    with database.read() as session:
        (error,) = session.scalars(select(NotifyOutbox.last_error)).all()
    assert error and TOKEN not in error and f"http://127.0.0.1:{port}" in error, error


def test_an_error_quoting_the_path_does_not_show_it() -> None:
    """http.client quotes a path it refuses (a control character in it): that quote went to the log and the outbox.
    (Refused before any connection.)"""
    with pytest.raises(DeliveryError) as raised:
        post_webhook(f"http://127.0.0.1:{free_port()}/x\x01?token={TOKEN}", "k", {}, "")
    assert TOKEN not in str(raised.value) and "control characters" in str(raised.value), raised.value


# -- 2. the file write_config makes --------------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[None]:
    """Under umask 000, as a service manager or a container may run the command."""
    before = os.umask(0)
    yield
    os.umask(before)


@pytest.mark.usefixtures("umask")
def test_write_config_makes_the_file_0644_whatever_the_umask(tmp_path: Path) -> None:
    """Before the fix: 0666 under umask 000 (any local user could set dns_reload, which the server runs)."""
    path = tmp_path / "sfa-omf.conf"
    write_config(str(path), Settings(interface_hrn="testbed", data_dir=str(tmp_path)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)  # a stricter umask does not make it unreadable to the service's group either: the mode is set
    other = tmp_path / "other.conf"
    write_config(str(other), Settings(interface_hrn="testbed", data_dir=str(tmp_path)))
    assert stat.S_IMODE(other.stat().st_mode) == 0o644


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize(
    "secret",
    [
        {"db_host": "db", "db_password": "pw-xyzzy"},
        {"database_url": "postgresql+psycopg://sfa:pw-xyzzy@db.example.org/sfa"},
    ],
)
def test_write_config_makes_a_file_with_a_secret_0600(tmp_path: Path, secret: dict[str, str]) -> None:
    path = tmp_path / "sfa-omf.conf"
    settings = Settings(interface_hrn="testbed", data_dir=str(tmp_path), **secret)  # type: ignore[arg-type]
    write_config(str(path), settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "pw-xyzzy" in path.read_text()
    assert read_config(str(path), environ={}).calendar_url == settings.calendar_url


# -- 3. config check: what another user could change ---------------------------------------------------------------


def problems(lab: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:  # noqa: F811
    code = main(["config", "check", str(lab / "sfa-omf.conf")])
    lines = capsys.readouterr().out.splitlines()
    found = [line.removeprefix("problem: ") for line in lines if line.startswith("problem: ")]
    assert code == (1 if found else 0)
    return found


def test_config_check_names_what_others_could_change(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert problems(lab, capsys) == []
    config, roots, authority = lab / "sfa-omf.conf", lab / "trusted_roots", lab / "authority"
    os.chmod(config, 0o666)
    os.chmod(roots, 0o777)
    os.chmod(authority, 0o775)
    os.chmod(authority / "lab.gid", 0o646)
    assert problems(lab, capsys) == [
        f"the file {config} is writable by its group and every user (mode 0666): another local user could change it; "
        f"chmod go-w {config}",
        f"the directory {authority} is writable by its group (mode 0775): another local user could change what it "
        f"holds; chmod go-w {authority}",
        f"the directory {roots} is writable by its group and every user (mode 0777): another local user could change "
        f"what it holds; chmod go-w {roots}",
        f"the file {authority / 'lab.gid'} is writable by every user (mode 0646): another local user could change it; "
        f"chmod go-w {authority / 'lab.gid'}",
    ]
    os.chmod(config, 0o644)
    os.chmod(roots, 0o755)
    os.chmod(authority, 0o755)
    os.chmod(authority / "lab.gid", 0o644)
    assert problems(lab, capsys) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_config_check_names_a_key_directory_another_user_owns(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """Run as root, the data directory's owner (the service's user, chown -R as docs/operators.md does) may own
    the files; another user may not."""
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid
    aggregate = lab / "aggregate"
    os.chown(aggregate, nobody, -1)
    assert problems(lab, capsys) == [
        f"the directory {aggregate} is owned by nobody, not by root or by the user running sfa-omf (root): that user "
        f"could change it; chown root {aggregate}"
    ]
    # The whole site given to one user (the service's), checked by root: fine.
    for path in [lab, *lab.rglob("*")]:
        os.chown(path, nobody, -1, follow_symlinks=False)
    assert problems(lab, capsys) == []
