"""The node VPN's certificates are renewed before they end (OpenVPN checks their dates at every handshake, every
renegotiation): the OpenVPN server's when SERVER_RENEW_BEFORE or less of it is left, at start and at every refresh,
and the OpenVPN server signalled to load it; a node's by its agent once two thirds of its lifetime passed, through the
agent API's VPN call, its OpenVPN signalled to load it. Short-lived certificates are issued with the code's own
signing function and an explicit validity. OpenVPN itself runs only in network namespaces (test_vpn.py): here a
Python process whose command line names it openvpn stands in for it, recording the SIGHUP it gets."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import KEY, VPN_CONF, VPN_PID, Agent, enrol, request_vpn, signal_openvpn
from sfa_omf.agents.vpn import CLIENT_LIFETIME, SERVER_LIFETIME, SERVER_PID, VpnCa, _leaf
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.vpn_records import VpnRecords
from sfa_omf.times import utcnow
from sfa_omf.trust.pki import load_private_key
from tests.agents.conftest import Lab
from tests.calendar.conftest import fresh_database

#: The stand-in for OpenVPN (named openvpn in its command line): writes its pid where OpenVPN's writepid would (when
#: given one), says it is ready, and adds a line to ``heard`` at each SIGHUP. ``heard`` is replaced whole by a rename:
#: appended in place, it existed empty for a moment, and a test that saw it then read "" (a clean-clone run did).
STAND_IN = """
import os, signal, sys, time
pid_file, heard = sys.argv[1], sys.argv[2]
def hup(*_):
    before = open(heard).read() if os.path.exists(heard) else ""
    with open(heard + ".new", "w") as new:
        new.write(before + "HUP\\n")
    os.replace(heard + ".new", heard)
signal.signal(signal.SIGHUP, hup)
if pid_file:
    open(pid_file, "w").write(f"{os.getpid()}\\n")
open(heard + ".ready", "w").close()
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def stand_ins() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def start_openvpn_stand_in(
    started: list[subprocess.Popen[bytes]], heard: Path, pid_file: Path | None, *args: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["openvpn", "-c", STAND_IN, str(pid_file or ""), str(heard), *args], executable=sys.executable, cwd=cwd
    )
    started.append(process)
    wait_for(Path(f"{heard}.ready"))
    return process


def wait_for(path: Path) -> None:
    """Until ``path`` exists (a generous bound only against a hang: the machine is loaded)."""
    for _ in range(600):
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def certificate_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def short_lived_server_certificate(directory: Path, ca: VpnCa, lifetime: timedelta, age: timedelta) -> None:
    """server.pem replaced by a certificate of the server's key issued ``age`` ago for ``lifetime``."""
    key = load_private_key((directory / "server.key").read_bytes())
    certificate = _leaf(
        "server", key.public_key(), ca.ca_key, ca.ca, server=True, lifetime=lifetime, not_before=utcnow() - age
    )
    (directory / "server.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def assert_renewed_server_certificate(directory: Path, ca: VpnCa, before: x509.Certificate) -> None:
    renewed = certificate_of(directory / "server.pem")
    assert renewed.serial_number != before.serial_number
    renewed.verify_directly_issued_by(ca.ca)  # raises when another CA signed it
    assert renewed.not_valid_after_utc > utcnow() + SERVER_LIFETIME - timedelta(days=1)
    assert renewed.not_valid_before_utc <= utcnow()
    assert renewed.public_key() == before.public_key()  # the same key: server.key needs no change
    usage = renewed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]  # what the nodes' remote-cert-tls server checks


def test_a_server_certificate_near_its_end_is_re_issued_at_refresh_and_openvpn_signalled(
    tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    assert f"writepid {directory / SERVER_PID}" in ca.server_config("127.0.0.1", 1194)
    heard = tmp_path / "heard"
    start_openvpn_stand_in(stand_ins, heard, directory / SERVER_PID)
    fresh = certificate_of(directory / "server.pem")
    assert fresh.not_valid_after_utc > utcnow() + SERVER_LIFETIME - timedelta(days=1)
    ca.refresh()
    assert certificate_of(directory / "server.pem").serial_number == fresh.serial_number  # not due: kept
    assert not heard.exists()

    short_lived_server_certificate(directory, ca, lifetime=timedelta(days=60), age=timedelta(days=35))  # 25 left
    before = certificate_of(directory / "server.pem")
    ca.refresh()
    assert_renewed_server_certificate(directory, ca, before)
    wait_for(heard)
    assert heard.read_text() == "HUP\n"
    # Renewed once: the next refreshes keep it.
    renewed = certificate_of(directory / "server.pem").serial_number
    ca.refresh()
    assert certificate_of(directory / "server.pem").serial_number == renewed


def test_an_expired_server_certificate_is_re_issued_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    short_lived_server_certificate(directory, ca, lifetime=timedelta(days=365), age=timedelta(days=366))
    before = certificate_of(directory / "server.pem")
    again = VpnCa(str(directory), "lab")  # what `sfa-omf serve` builds when it starts
    assert_renewed_server_certificate(directory, again, before)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = fresh_database("postgresql", tmp_path)
    yield db
    db.dispose()


def test_on_a_cluster_each_hosts_periodic_refresh_re_issues_its_server_certificate_once(
    tmp_path: Path, database: Database
) -> None:
    """Two processes of one host (serve --workers 2) on the cluster's records: the one whose refresh comes first
    re-issues; the other's refresh finds the new certificate and issues none."""
    directory = tmp_path / "vpn"
    first = VpnCa(str(directory), "lab", VpnRecords(database))
    second = VpnCa(str(directory), "lab", VpnRecords(database))
    short_lived_server_certificate(directory, first, lifetime=timedelta(days=365), age=timedelta(days=340))
    before = certificate_of(directory / "server.pem")
    second.refresh()
    assert_renewed_server_certificate(directory, first, before)
    renewed = (directory / "server.pem").read_bytes()
    first.refresh()
    assert (directory / "server.pem").read_bytes() == renewed


def _vpn_lab(lab: Lab) -> None:
    lab.settings = replace(lab.settings, agent_vpn_remote="127.0.0.1")
    lab.restart()


def _inline_certificate(state: Path) -> x509.Certificate:
    found = re.search(r"<cert>\s*(.*?)\s*</cert>", (state / VPN_CONF).read_text(), re.DOTALL)
    assert found is not None
    return x509.load_pem_x509_certificate(found.group(1).encode("ascii"))


def test_an_agent_renews_its_vpn_certificate_after_two_thirds_of_its_life(
    lab: Lab, tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    _vpn_lab(lab)
    vpn = lab.directory / "vpn"
    state = tmp_path / "node"
    enrol(lab.url, lab.invite(), lab.root, str(state), "pc1", "192.168.1.10")
    request_vpn(str(state))
    # The node's certificate, issued 21 days ago for 30 (70 % of its life passed), by the VPN's CA.
    ca_key = load_private_key((vpn / "ca.key").read_bytes())
    ca = certificate_of(vpn / "ca.pem")
    node_key = load_private_key((state / KEY).read_bytes())
    old = _leaf(
        "pc1", node_key.public_key(), ca_key, ca, server=False, lifetime=timedelta(days=30),
        not_before=utcnow() - timedelta(days=21),
    )  # fmt: skip
    old_pem = old.public_bytes(serialization.Encoding.PEM).decode("ascii")
    text = (state / VPN_CONF).read_text()
    (state / VPN_CONF).write_text(re.sub(r"<cert>.*?</cert>", f"<cert>\n{old_pem}</cert>", text, flags=re.DOTALL))
    heard = tmp_path / "heard"
    start_openvpn_stand_in(stand_ins, heard, state / VPN_PID, "--config", str(state / VPN_CONF))
    agent = Agent(str(state), DirectoryHost(str(tmp_path / "root"), str(state)))

    agent.run_once()
    new = _inline_certificate(state)
    assert new.serial_number != old.serial_number
    new.verify_directly_issued_by(ca)
    assert new.not_valid_after_utc > utcnow() + CLIENT_LIFETIME - timedelta(days=1)
    assert new.public_key() == node_key.public_key()  # the node's own key, which never left it
    # It is the node's current certificate for the aggregate (its address entry kept), not revoked.
    assert certificate_of(vpn / "issued" / "pc1.pem").serial_number == new.serial_number
    crl = x509.load_pem_x509_crl((vpn / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None
    assert (vpn / "ccd" / "pc1").read_text().startswith("ifconfig-push 10.200.0.2 ")
    wait_for(heard)  # the node's OpenVPN was told to load it
    assert heard.read_text() == "HUP\n"
    # The agent still authenticates (its node certificate is unchanged), and the new certificate is not due.
    conf = (state / VPN_CONF).read_bytes()
    assert agent.run_once()["active"] == []
    assert (state / VPN_CONF).read_bytes() == conf


def test_an_agent_keeps_a_fresh_vpn_certificate(lab: Lab, tmp_path: Path) -> None:
    _vpn_lab(lab)
    state = tmp_path / "node"
    enrol(lab.url, lab.invite(), lab.root, str(state), "pc1", "192.168.1.10")
    request_vpn(str(state))
    conf = (state / VPN_CONF).read_bytes()
    issued = (lab.directory / "vpn" / "issued" / "pc1.pem").read_bytes()
    agent = Agent(str(state), DirectoryHost(str(tmp_path / "root"), str(state)))
    assert agent.renew_vpn() is False
    agent.run_once()
    assert (state / VPN_CONF).read_bytes() == conf
    assert (lab.directory / "vpn" / "issued" / "pc1.pem").read_bytes() == issued


def test_an_openvpn_started_without_a_pid_file_is_found_by_its_configuration(
    tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    """A node's OpenVPN started on a vpn.conf written before it named a pid file (``openvpn --config vpn.conf``
    from the state directory) is signalled all the same; one on another configuration is not."""
    (tmp_path / VPN_CONF).write_text("client\n")
    (tmp_path / "other.conf").write_text("client\n")
    heard, other = tmp_path / "heard", tmp_path / "other-heard"
    start_openvpn_stand_in(stand_ins, heard, None, "--config", VPN_CONF, cwd=tmp_path)
    start_openvpn_stand_in(stand_ins, other, None, "--config", "other.conf", cwd=tmp_path)
    assert signal_openvpn(tmp_path / VPN_PID, config=tmp_path / VPN_CONF) is None
    wait_for(heard)
    assert not other.exists()
    # A stale pid file (its pid not an OpenVPN) is never signalled.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "stale.pid").write_text(f"{sleeper.pid}\n")
        assert "not OpenVPN" in str(signal_openvpn(tmp_path / "stale.pid"))
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
