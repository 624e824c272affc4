"""What a hunt of the operator's command line found, each fixed: refused before anything is written, exit 2 for an
operator's mistake (1 for a server that cannot start, a problem ``config check`` finds), one line that says what to
do, no traceback.

1. ``trust add-root`` of a peer's aggregate GID (the authority's name, CA, but signed by the authority's root) is
   refused, naming the root to trust instead.
2. ``init DIR`` again on a site made with ``--no-demo`` adds no demo user or slice.
3. ``init``, ``serve`` and ``config check`` refuse a database that holds another authority's registry.
4. ``init --hostname`` and the configuration's hostname and host settings take a host, not a URL or host:port;
   ``init --bind`` takes an IP address.
5. start-up refusals show a GeniError's message (not its reason code) and an OSError without the path twice.
6. ``sfa-omf notify`` and ``sfa-omf agent`` alone list their own commands.
7. ``node vpn-config --listen`` takes an IP address only (a line break added OpenVPN directives).
8. ``node add --property =v``, ``lease list --from`` after ``--to``, ``init FILE``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.calendar.database import sqlite_url
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from tests import test_preflight
from tests.ports import free_port
from tests.postgres import empty_postgres
from tests.test_cli_operator import one_line_error, sfa_omf

lab = test_preflight.lab  # the fixture: an initialised directory of authority lab on free ports, no SFA_* variable


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """The one line of ``sfa-omf ARGV`` run in this process, checked to fail with ``code`` and print nothing else."""
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err.rstrip("\n")


def ports() -> list[str]:
    return ["--registry-port", str(free_port()), "--aggregate-port", str(free_port())]


# --- 1. trust add-root ---------------------------------------------------------------------------------------------


def test_add_root_refuses_a_certificate_an_authority_issued(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The peer's am.gid (subject and issuer CN=peerlab, CA, an authority's type) was trusted as peerlab's root: no
    user of peerlab could log in, and peerlab's real root was then refused as a look-alike."""
    peer = tmp_path / "peer"
    init_directory(str(peer), "peerlab", (), demo=False)
    config = str(lab / "sfa-omf.conf")
    roots = sorted(path.name for path in (lab / "trusted_roots").iterdir())
    line = refused(capsys, ["trust", "add-root", str(peer / "aggregate" / "am.gid"), "--config", config])
    assert line == (
        "sfa-omf: urn:publicid:IDN+peerlab+authority+am is no root: this certificate is issued by CN=peerlab, not "
        "self-signed; trust that authority's root GID (its authority/peerlab.gid) instead"
    )
    assert sorted(path.name for path in (lab / "trusted_roots").iterdir()) == roots
    assert main(["trust", "add-root", str(peer / "authority" / "peerlab.gid"), "--config", config]) == 0
    assert "now trusting peerlab" in capsys.readouterr().out
    # Offered again once the root is trusted: what it is, not "a look-alike: remove the old root file first".
    line = refused(capsys, ["trust", "add-root", str(peer / "aggregate" / "am.gid"), "--config", config])
    assert line.startswith("sfa-omf: urn:publicid:IDN+peerlab+authority+am is no root: this certificate is issued by ")
    assert line.endswith("which is the one to trust; nothing to add") and "look-alike" not in line


# --- 2. init again on a --no-demo site -----------------------------------------------------------------------------


def test_init_again_on_a_site_made_without_demo_adds_no_demo_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    assert main(["init", str(site), "--authority", "mylab", "--no-demo", *ports()]) == 0
    capsys.readouterr()
    assert main(["init", str(site)]) == 0
    out, err = capsys.readouterr()
    assert "user alice" not in out
    assert err == f"sfa-omf: {site} was made without demo users (--no-demo): none added (--user NAME adds one)\n"
    assert not (site / "users").exists() and not (site / "gids").exists()
    assert main(["user", "list", "--config", str(site / "sfa-omf.conf")]) == 0
    assert "alice" not in capsys.readouterr().out
    assert main(["slice", "list", "--config", str(site / "sfa-omf.conf")]) == 0
    assert "demo" not in capsys.readouterr().out
    # Asked for by name, a demo user is added.
    assert main(["init", str(site), "--user", "bob"]) == 0
    assert "user bob" in capsys.readouterr().out
    assert (site / "gids" / "mylab.bob.gid").exists()


def test_init_again_on_a_demo_site_keeps_completing_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    assert main(["init", str(site), "--authority", "mylab", *ports()]) == 0
    (site / "users" / "alice" / "sfi" / "sfi_config").unlink()
    capsys.readouterr()
    assert main(["init", str(site)]) == 0
    out, err = capsys.readouterr()
    assert "user alice" in out and err == ""


# --- 3. a database of another authority ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_init_refuses_a_database_of_another_authority(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data directory made again under another name, the database kept: "registry otherlab" served mylab's
    users and nodes."""
    url = sqlite_url(str(tmp_path / "shared.sqlite")) if kind == "sqlite" else empty_postgres()
    mylab = ["init", str(tmp_path / "mylab"), "--authority", "mylab", "--no-demo", "--database-url", url]
    assert main([*mylab, *ports()]) == 0
    assert main(["node", "add", "node1", "--config", str(tmp_path / "mylab" / "sfa-omf.conf")]) == 0
    capsys.readouterr()
    line = refused(
        capsys, ["init", str(tmp_path / "other"), "--authority", "otherlab", "--database-url", url, *ports()]
    )
    assert line.startswith("sfa-omf: --database-url ")
    assert line.endswith(
        " belongs to authority mylab (its registry: 2 records): use another database, or --authority mylab; nothing "
        "was created"
    )
    assert not (tmp_path / "other").exists()
    # The same authority's directory made again on its database is no other authority's.
    assert main(["init", str(tmp_path / "again"), "--authority", "mylab", "--database-url", url, *ports()]) == 0


def test_serve_and_config_check_refuse_a_database_of_another_authority(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site whose database_url names another site's database (here lab's), and init run again on it."""
    other = tmp_path / "other"
    assert main(["init", str(other), "--authority", "otherlab", "--no-demo", *ports()]) == 0
    config = other / "sfa-omf.conf"
    lab_url = f"database_url = sqlite:///{lab}/sfa-omf.sqlite"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(f"database_url = sqlite:///{other}/sfa-omf.sqlite", lab_url), encoding="utf-8")
    assert lab_url in config.read_text(encoding="utf-8")
    capsys.readouterr()
    expected = (
        f"the calendar database sqlite:///{lab}/sfa-omf.sqlite belongs to authority lab (its registry: 3 records), "
        "not to otherlab ([sfa] interface_hrn): set [sfa_omf] database_url to otherlab's own database, or serve it "
        "from the directory of authority lab"
    )
    assert main(["config", "check", str(config)]) == 1
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")] == [
        f"problem: {expected}"
    ]
    assert one_line_error(sfa_omf("serve", "--config", str(config)), 1) == f"sfa-omf: cannot start: {expected}"
    line = refused(capsys, ["init", str(other)])
    assert line == (
        f"sfa-omf: the calendar database sqlite:///{lab}/sfa-omf.sqlite ([sfa_omf] database_url) belongs to "
        "authority lab (its registry: 3 records), not to otherlab: set database_url to this site's own database; "
        "nothing was changed"
    )
    assert main(["user", "list", "--config", str(lab / "sfa-omf.conf")]) == 0
    assert "otherlab" not in capsys.readouterr().out


# --- 4. hostnames and addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("https://x.org", "is a URL: write the host alone (x.org), without https://"),
        ("x.org:8443", "holds a ':': write the host alone, without a port"),
        ("am example.org", "holds a space"),
        ("x.org/am", "holds a '/'"),
        ("bad_name.org", "is not a DNS name"),
    ],
)
def test_init_refuses_a_hostname_that_is_no_host(
    tmp_path: Path, hostname: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was written as ``registry = http://https://x.org:12345/`` into every user's sfi_config, exit 0."""
    line = refused(capsys, ["init", str(tmp_path / "site"), "--hostname", hostname])
    assert line.startswith(f"sfa-omf: --hostname {hostname!r} {expected}"), line
    assert line.endswith("; nothing was created")
    assert not (tmp_path / "site").exists()


def test_init_takes_a_dns_name_or_an_ip_address_as_hostname(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for number, hostname in enumerate(("am.example.org", "192.0.2.7")):
        assert main(["init", str(tmp_path / f"site{number}"), "--hostname", hostname, *ports()]) == 0
        assert f"hostname = {hostname}\n" in (tmp_path / f"site{number}" / "sfa-omf.conf").read_text()


def test_an_ipv6_hostname_is_in_brackets_in_every_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``https://2001:db8::7:12346/`` names no port: sfi.py and every browser read it as a broken host."""
    site = tmp_path / "site"
    assert main(["init", str(site), "--hostname", "2001:db8::7", *ports()]) == 0
    out, _ = capsys.readouterr()
    settings = read_config(str(site / "sfa-omf.conf"))
    aggregate = f"https://[2001:db8::7]:{settings.aggregate_port}"
    assert f"aggregate {aggregate}/" in out and "https://2001:db8::7:" not in out
    sfi_configs = list(site.rglob("sfi_config"))
    assert sfi_configs
    for sfi_config in sfi_configs:
        text = sfi_config.read_text()
        assert f"http://[2001:db8::7]:{settings.aggregate_port}/" in text, text
        assert f"http://[2001:db8::7]:{settings.registry_port}/" in text, text
    assert settings.https_url(settings.aggregate_port) == aggregate
    assert settings.https_url(1, "192.0.2.7") == "https://192.0.2.7:1"


def test_init_refuses_a_bind_address_that_is_no_ip_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["init", str(tmp_path / "site"), "--bind", "notanip"])
    assert line.startswith("sfa-omf: --bind 'notanip' is not an IP address: ")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("SFA_OMF_HOSTNAME", "https://x.org", "[sfa_omf] hostname 'https://x.org' is a URL"),
        ("SFA_REGISTRY_HOST", "a b", "[sfa_registry] host 'a b' holds a space"),
        ("SFA_AGGREGATE_HOST", "127.0.0.1:12346", "[sfa_aggregate] host '127.0.0.1:12346' holds a ':'"),
    ],
)
def test_the_configuration_refuses_a_host_that_is_no_host(
    lab: Path,
    setting: str,
    value: str,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(setting, value)
    line = refused(capsys, ["node", "list", "--config", str(lab / "sfa-omf.conf")])
    assert line.startswith(f"sfa-omf: invalid configuration: environment {setting}: {expected}"), line


# --- 5. start-up refusals ------------------------------------------------------------------------------------------


def test_startup_refusals_say_no_reason_code_and_the_path_once(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gid = lab / "aggregate" / "am.gid"
    gid.write_text("garbage\n", encoding="utf-8")
    assert main(["config", "check", str(lab / "sfa-omf.conf")]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert problems == [
        f"problem: cannot use the aggregate's GID {gid}: cannot read a PEM certificate chain: no certificate in it; "
        "restore it from a backup"
    ]
    gid.unlink()
    gid.mkdir()
    assert main(["config", "check", str(lab / "sfa-omf.conf")]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert problems == [f"problem: cannot use the aggregate's GID {gid}: Is a directory; restore it from a backup"]


def test_a_trusted_root_that_cannot_be_read_is_said_without_reason_code(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (lab / "trusted_roots" / "junk.gid").write_text("junk\n", encoding="utf-8")
    assert main(["config", "check", str(lab / "sfa-omf.conf")]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1 and "bad_args" not in problems[0]
    assert problems[0].startswith(f"problem: cannot read the trusted roots in {lab}/trusted_roots: ")


# --- 6. command groups alone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["notify", "agent"])
def test_notify_and_agent_alone_print_their_own_commands(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    assert capsys.readouterr().out.startswith(f"usage: sfa-omf {group} [-h]")


# --- 7. node vpn-config --listen -----------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0\nscript-security 2\nup /tmp/evil.sh", "vpn.example.org", ""])
def test_vpn_config_takes_an_ip_address_to_listen_on(
    lab: Path, listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(capsys, ["node", "vpn-config", "--listen", listen, "--config", str(lab / "sfa-omf.conf")])
    assert line.startswith(f"sfa-omf: --listen {listen!r} is not an IP address: ")
    assert not (lab / "vpn").exists()


# --- 8. smaller ones -----------------------------------------------------------------------------------------------


def test_node_add_refuses_a_property_without_a_key(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(lab / "sfa-omf.conf")
    line = refused(capsys, ["node", "add", "node9", "--property", "=v", "--config", config])
    assert line == "sfa-omf: --property '=v': expected KEY=VALUE, with a KEY"
    assert main(["node", "list", "--config", config]) == 0
    assert "node9" not in capsys.readouterr().out


def test_lease_list_refuses_a_from_later_than_its_to(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lease", "list", "--from", "2030-01-02T00:00:00Z", "--to", "2030-01-01T00:00:00Z"]
    line = refused(capsys, [*argv, "--config", str(lab / "sfa-omf.conf")])
    assert line == (
        "sfa-omf: --from 2030-01-02T00:00:00Z is later than --to 2030-01-01T00:00:00Z: no lease could match; swap them"
    )


def test_init_on_a_file_says_it_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("kept\n", encoding="utf-8")
    line = refused(capsys, ["init", str(afile)])
    assert line == f"sfa-omf: {afile} is a file, not a directory: give the site's directory (init makes a new one)"
    assert afile.read_text(encoding="utf-8") == "kept\n"
