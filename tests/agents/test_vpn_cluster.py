"""Several hosts on one database are one VPN (agents/vpn.py with calendar/vpn_records.py): one CA, made once and
refused when a host holds another or none; a certificate issued, re-bound or revoked through one host is in every
host's files (CRL, ccd/, issued/) after its next refresh. Two VpnCa of two data directories share one real database
(PostgreSQL); the CRLs are parsed with cryptography (OpenVPN reads the same file). What a refresh reads and writes is
seen through Python's audit events (every open, listing, rename and removal of a file raises one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.threads import blockingCallFromThread

import sfa_omf.agents.vpn as vpn_module
from sfa_omf.agents.node import enrol, request_vpn
from sfa_omf.agents.vpn import CA_FILES, VpnCa, VpnCaMismatch, client_config, node_address
from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.vpn_records import VpnRecords
from sfa_omf.cli_agents import cluster_vpn_ca, revoke_vpn_of_removed_node
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import RunningServer, _agent_api, build_aggregate, start_aggregate
from sfa_omf.trust.pki import new_private_key, private_key_pem
from tests.agents.conftest import SERVER_ADDRESS
from tests.agents.test_agent_process import eventually
from tests.calendar.conftest import fresh_database
from tests.postgres import empty_postgres


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """PostgreSQL: several hosts share it (SQLite is served by one process of one host, which keeps files only)."""
    db = fresh_database("postgresql", tmp_path)
    yield db
    db.dispose()


def host(tmp_path: Path, name: str, database: Database, clock: Callable[[], float] = time.time) -> VpnCa:
    """What ``sfa-omf serve`` builds on host ``name`` (its own DATA_DIR/vpn)."""
    return VpnCa(str(tmp_path / name / "vpn"), "lab", VpnRecords(database), clock=clock)


def settled() -> float:
    """A clock a minute ahead: the files' timestamps are settled at once (vpn.SETTLED_S), as a host finds them at
    its periodic refresh a few seconds after it wrote them, without the test waiting."""
    return time.time() + 60


_FILE_EVENTS = ("open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.mkdir")
_recording: list[tuple[str, str]] | None = None
_hooked = False


def _note_file_event(event: str, args: tuple[Any, ...]) -> None:
    if _recording is not None and event in _FILE_EVENTS and args and isinstance(args[0], str | bytes | os.PathLike):
        _recording.append((event, os.fsdecode(args[0])))


@contextmanager
def files_touched(directory: Path) -> Iterator[list[str]]:
    """Each file or directory under ``directory`` opened, listed, replaced, removed or made meanwhile ("event path",
    the path relative to ``directory``); a stat raises no audit event."""
    global _recording, _hooked
    if not _hooked:  # an audit hook stays for the whole process: one, silent when not recording
        sys.addaudithook(_note_file_event)
        _hooked = True
    _recording = []
    touched: list[str] = []
    try:
        yield touched
    finally:
        recorded, _recording = _recording, None
        for event, path in recorded:
            if Path(path).is_relative_to(directory):
                touched.append(f"{event} {Path(path).relative_to(directory)}")


def copy_ca(tmp_path: Path, source: str, target: str) -> None:
    (tmp_path / target / "vpn").mkdir(parents=True, exist_ok=True)
    for name in CA_FILES:
        shutil.copy2(tmp_path / source / "vpn" / name, tmp_path / target / "vpn" / name)


def serial(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number


def revoked_in(directory: Path, pem: str) -> bool:
    crl = x509.load_pem_x509_crl((directory / "vpn" / "crl.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((directory / "vpn" / "ca.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key()), "the CRL is signed by the host's CA (OpenVPN checks it)"
    return crl.get_revoked_certificate_by_serial_number(serial(pem)) is not None


def test_a_second_host_without_the_clusters_ca_refuses_and_says_what_to_copy(
    tmp_path: Path, database: Database
) -> None:
    first = host(tmp_path, "a", database)
    with pytest.raises(VpnCaMismatch) as refused:
        host(tmp_path, "b", database)
    said = str(refused.value)
    assert "holds no VPN CA" in said and "copy ca.key, ca.pem, server.key, server.pem" in said, said
    assert f"of host {socket.gethostname()!r}" in said and str(tmp_path / "b" / "vpn") in said, said
    assert not (tmp_path / "b" / "vpn" / "ca.pem").exists(), "no second CA made"

    # A CA of its own (made by an operator's command given no database) is refused as well, never recorded.
    VpnCa(str(tmp_path / "c" / "vpn"), "lab")
    with pytest.raises(VpnCaMismatch, match="holds another VPN CA"):
        host(tmp_path, "c", database)

    copy_ca(tmp_path, "a", "b")
    assert host(tmp_path, "b", database).ca_pem == first.ca_pem


def test_hosts_starting_together_on_a_new_cluster_keep_one_ca(tmp_path: Path, database: Database) -> None:
    barrier = threading.Barrier(2)
    started: dict[str, VpnCa] = {}
    refused: dict[str, str] = {}

    def start(name: str) -> None:
        barrier.wait()
        try:
            started[name] = host(tmp_path, name, database)
        except VpnCaMismatch as exc:
            refused[name] = str(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1 and len(refused) == 1, (started, refused)
    (loser,) = refused
    assert not (tmp_path / loser / "vpn" / "ca.pem").exists(), "the losing host's unused CA is not left behind"
    (winner,) = started
    copy_ca(tmp_path, winner, loser)
    assert host(tmp_path, loser, database).ca_pem == started[winner].ca_pem


def test_rebound_and_revoked_through_one_host_are_refused_by_the_other(tmp_path: Path, database: Database) -> None:
    """The hunter's case (/tmp/s14/hunt-cluster/vpn_two_hosts.py): a node's certificate issued through A, the node
    re-bound to a new key through B: the old certificate is in A's CRL and A's ccd/ entry for it goes; B's new
    certificate chains to the CA A's OpenVPN trusts and gets its address on A; a removal through A reaches B."""
    a = host(tmp_path, "a", database)
    copy_ca(tmp_path, "a", "b")
    b = host(tmp_path, "b", database)
    old_key, new_key = new_private_key(), new_private_key()
    old, address = a.issue("n1", 1, old_key.public_key())
    assert address == str(node_address(1))
    b.refresh()
    assert (tmp_path / "b" / "vpn" / "ccd" / "n1").read_text() == f"ifconfig-push {address} 255.255.0.0\n"

    assert b.revoke_other_key("n1", old_key.public_key()) is False, "the same key keeps its tunnel"
    assert b.revoke_other_key("n1", new_key.public_key()) is True
    assert revoked_in(tmp_path / "b", old)
    a.refresh()
    assert revoked_in(tmp_path / "a", old), "host A's OpenVPN refuses the old key's certificate"
    assert not (tmp_path / "a" / "vpn" / "ccd" / "n1").exists()

    new, again = b.issue("n1", 1, new_key.public_key())
    assert again == address
    a.refresh()
    x509.load_pem_x509_certificate(new.encode("ascii")).verify_directly_issued_by(a.ca)
    assert not revoked_in(tmp_path / "a", new)
    assert (tmp_path / "a" / "vpn" / "ccd" / "n1").exists()
    assert (tmp_path / "a" / "vpn" / "issued" / "n1.pem").read_text() == new

    assert a.revoke_node("n1") is True and b.revoke_node("n1") is False
    b.refresh()
    assert revoked_in(tmp_path / "b", new) and not (tmp_path / "b" / "vpn" / "ccd" / "n1").exists()


def test_a_revocation_made_without_the_database_reaches_the_other_hosts(tmp_path: Path, database: Database) -> None:
    """``sfa-omf node vpn-revoke`` builds its VpnCa on the files alone: the host's next refresh records it."""
    a = host(tmp_path, "a", database)
    copy_ca(tmp_path, "a", "b")
    b = host(tmp_path, "b", database)
    pem, _ = b.issue("n2", 2, new_private_key().public_key())
    a.refresh()
    assert VpnCa(str(tmp_path / "a" / "vpn"), "lab").revoke_node("n2") is True
    assert revoked_in(tmp_path / "a", pem)
    a.refresh()
    assert revoked_in(tmp_path / "a", pem), "the refresh keeps it (recorded, not overwritten)"
    b.refresh()
    assert revoked_in(tmp_path / "b", pem) and not (tmp_path / "b" / "vpn" / "ccd" / "n2").exists()


def test_the_operators_commands_act_on_the_clusters_records(tmp_path: Path, database: Database) -> None:
    """``sfa-omf node vpn-revoke`` and ``node remove`` (cli_agents.cluster_vpn_ca, revoke_vpn_of_removed_node) on
    PostgreSQL: a certificate issued through host A is revoked from host C, which has no VPN files at all (its
    operator removes the node there), and the revocation reaches A at its refresh; on a host with the cluster's CA
    it is in that host's CRL at once."""
    a = host(tmp_path, "a", database)
    first, _ = a.issue("n5", 5, new_private_key().public_key())
    second, _ = a.issue("n6", 6, new_private_key().public_key())
    url = database.engine.url.render_as_string(hide_password=False)
    on_c = SimpleNamespace(data_dir=str(tmp_path / "c"), calendar_url=url, interface_hrn="lab")
    assert revoke_vpn_of_removed_node(on_c, "n5") is True
    assert not (tmp_path / "c" / "vpn").exists(), "host C made no CA of its own"
    assert revoke_vpn_of_removed_node(on_c, "n5") is False, "nothing left to revoke"
    a.refresh()
    assert revoked_in(tmp_path / "a", first) and not (tmp_path / "a" / "vpn" / "ccd" / "n5").exists()

    on_a = SimpleNamespace(data_dir=str(tmp_path / "a"), calendar_url=url, interface_hrn="lab")
    assert cluster_vpn_ca(on_a).revoke_node("n6") is True
    assert revoked_in(tmp_path / "a", second)
    with pytest.raises(VpnCaMismatch, match="holds no VPN CA"):
        cluster_vpn_ca(on_c)  # vpn-config on a host without the cluster's CA: refused, none made
    assert not (tmp_path / "c" / "vpn" / "ca.pem").exists()


def test_a_node_removed_on_a_host_upgraded_from_the_file_only_vpn_loses_its_certificate(
    tmp_path: Path, database: Database
) -> None:
    """`node remove` after `db upgrade`, before the new `serve` first started: the certificate the file-only VPN issued
    is recorded from the host's files, then revoked; the serving host's refresh keeps it revoked."""
    before = VpnCa(str(tmp_path / "a" / "vpn"), "lab")
    pem, _ = before.issue("n7", 7, new_private_key().public_key())
    url = database.engine.url.render_as_string(hide_password=False)
    on_a = SimpleNamespace(data_dir=str(tmp_path / "a"), calendar_url=url, interface_hrn="lab")
    assert revoke_vpn_of_removed_node(on_a, "n7") is True
    host(tmp_path, "a", database).refresh()
    assert revoked_in(tmp_path / "a", pem) and not (tmp_path / "a" / "vpn" / "ccd" / "n7").exists()


def test_a_single_hosts_files_from_before_are_recorded_at_its_first_start(tmp_path: Path, database: Database) -> None:
    """An upgraded host: its CA becomes the cluster's, its issued and revoked certificates the cluster's records."""
    before = VpnCa(str(tmp_path / "a" / "vpn"), "lab")
    kept, _ = before.issue("n3", 3, new_private_key().public_key())
    gone, _ = before.issue("n4", 4, new_private_key().public_key())
    before.revoke_node("n4")
    host(tmp_path, "a", database)
    copy_ca(tmp_path, "a", "b")
    host(tmp_path, "b", database)
    assert revoked_in(tmp_path / "b", gone) and not revoked_in(tmp_path / "b", kept)
    assert (tmp_path / "b" / "vpn" / "ccd" / "n3").exists() and not (tmp_path / "b" / "vpn" / "ccd" / "n4").exists()


def test_a_refresh_when_nothing_changed_reads_and_writes_no_file(tmp_path: Path, database: Database) -> None:
    """The review's case: every process of every host refreshes every few seconds, and with 1000 nodes reading and
    verifying every certificate each time took 0.85 s. Nothing changed: one query and four stats, no file opened. A
    revocation through another host is then written touching only what it changed."""
    a = host(tmp_path, "a", database, clock=settled)
    key = new_private_key().public_key()
    pems = {name: a.issue(name, number, key)[0] for number, name in enumerate(("n1", "n2", "n3"), start=1)}
    vpn = tmp_path / "a" / "vpn"
    with files_touched(vpn) as touched:
        assert a.refresh() is False
        assert a.refresh() is False
    assert touched == [], touched

    copy_ca(tmp_path, "a", "b")
    host(tmp_path, "b", database).revoke_node("n2")
    with files_touched(vpn) as touched:
        assert a.refresh() is True
    assert "os.rename crl.pem.tmp" in touched and "os.remove ccd/n2" in touched, touched
    assert not [line for line in touched if "n1" in line or "n3" in line], "the other nodes' files are left alone"
    assert revoked_in(tmp_path / "a", pems["n2"]) and not revoked_in(tmp_path / "a", pems["n1"])
    assert sorted(path.name for path in (vpn / "ccd").iterdir()) == ["n1", "n3"]
    assert sorted(path.name for path in (vpn / "issued").iterdir()) == ["n1.pem", "n3.pem"]


def test_another_worker_of_the_host_reads_what_the_first_wrote_and_writes_nothing(
    tmp_path: Path, database: Database
) -> None:
    """Each worker process of a host refreshes the same files: the one that comes second reads them (they changed
    since it last looked), finds them in line with the records, writes nothing, and then reads nothing more."""
    first = host(tmp_path, "a", database, clock=settled)
    second = host(tmp_path, "a", database, clock=settled)
    key = new_private_key().public_key()
    first.issue("n1", 1, key)
    pem, _ = first.issue("n2", 2, key)
    first.revoke_node("n2")
    vpn = tmp_path / "a" / "vpn"
    with files_touched(vpn) as touched:
        assert second.refresh() is False
    assert touched and not [line for line in touched if line.startswith(("os.rename", "os.remove"))], touched
    with files_touched(vpn) as touched:
        assert second.refresh() is False
    assert touched == [], touched
    assert revoked_in(tmp_path / "a", pem) and not (vpn / "ccd" / "n2").exists()


def test_a_revocation_without_the_database_is_recorded_by_a_host_whose_files_had_settled(
    tmp_path: Path, database: Database
) -> None:
    """``sfa-omf node vpn-revoke`` given no database replaces revoked.json and crl.pem: the host's next refresh sees
    their stamps change, though the records did not, and records the revocation for every host."""
    a = host(tmp_path, "a", database, clock=settled)
    copy_ca(tmp_path, "a", "b")
    b = host(tmp_path, "b", database, clock=settled)
    pem, _ = a.issue("n2", 2, new_private_key().public_key())
    b.refresh()
    assert a.refresh() is False, "settled: nothing changed"
    assert VpnCa(str(tmp_path / "a" / "vpn"), "lab").revoke_node("n2") is True
    a.refresh()
    assert revoked_in(tmp_path / "a", pem), "the refresh keeps it (recorded, not overwritten)"
    b.refresh()
    assert revoked_in(tmp_path / "b", pem) and not (tmp_path / "b" / "vpn" / "ccd" / "n2").exists()


def test_vpn_writes_leave_the_calendar_generation_as_it_was(tmp_path: Path, database: Database) -> None:
    """No cached answer holds a VPN row: a CA recorded, files recorded at a first start, certificates issued,
    replaced and revoked leave every process's cached advertisement (keyed on the generation) in place."""
    with database.read() as session:
        before = read_generation(session)
    kept, _ = VpnCa(str(tmp_path / "a" / "vpn"), "lab").issue("n9", 9, new_private_key().public_key())
    a = host(tmp_path, "a", database)  # records the CA and the file-only certificate
    key = new_private_key().public_key()
    first, _ = a.issue("n1", 1, key)
    second, _ = a.issue("n1", 1, key)  # the first is revoked
    assert a.revoke_other_key("n1", new_private_key().public_key()) is True
    a.revoke(kept, "n9")
    state = VpnRecords(database).state()
    assert {serial(first), serial(second), serial(kept)} <= state.revoked and state.issued == ()
    with database.read() as session:
        assert read_generation(session) == before


def _serve(directory: Path, url: str, reactor: Any) -> tuple[Aggregate, RunningServer, Settings]:
    """``sfa-omf serve`` of one host: its data directory, the shared PostgreSQL, the VPN on."""
    config = directory / "sfa-omf.conf"
    lines = config.read_text().splitlines()
    config.write_text(
        "".join(f"database_url = {url}\n" if ln.startswith("database_url =") else f"{ln}\n" for ln in lines)
    )
    settings = replace(read_config(str(config)), agent_vpn_remote="127.0.0.1")
    aggregate = build_aggregate(settings)
    try:
        server = blockingCallFromThread(reactor, start_aggregate, settings, aggregate, 0)
    except BaseException:
        aggregate.database.dispose()
        raise
    return aggregate, server, settings


def _copy_host(tmp_path: Path, source: str, target: str, with_vpn: bool = True) -> Path:
    """The documented copy of a data directory to another host (the paths in its configuration made its own)."""
    shutil.copytree(tmp_path / source, tmp_path / target, ignore=None if with_vpn else shutil.ignore_patterns("vpn"))
    config = tmp_path / target / "sfa-omf.conf"
    config.write_text(config.read_text().replace(str(tmp_path / source), str(tmp_path / target)))
    return tmp_path / target


def test_two_serving_hosts_are_one_vpn(running_reactor: Any, tmp_path: Path) -> None:
    """Two ``serve`` hosts on one PostgreSQL: a third without the CA does not start; a node re-bound to a new key
    through B loses its old tunnel on A at A's next periodic step; B's certificate for the new key works on A."""
    url = empty_postgres()
    init_directory(str(tmp_path / "a"), "lab", ("ann",))
    root = str(tmp_path / "a" / "authority" / "lab.gid")
    a, server_a, settings_a = _serve(tmp_path / "a", url, running_reactor)
    servers = [(a, server_a)]
    try:
        with pytest.raises(VpnCaMismatch, match="holds no VPN CA"):
            _serve(_copy_host(tmp_path, "a", "c", with_vpn=False), url, running_reactor)
        b, server_b, _ = _serve(_copy_host(tmp_path, "a", "b"), url, running_reactor)
        servers.append((b, server_b))
        agents = Agents(a.database, a.policy)

        enrol(
            f"https://127.0.0.1:{server_a.port_number}/",
            agents.create_token("default", 3600)[0],
            root,
            str(tmp_path / "old"),
            "pc1",
            "192.168.1.10",
        )
        request_vpn(str(tmp_path / "old"))
        old = (tmp_path / "old" / "vpn.conf").read_text().split("<cert>\n")[1].split("</cert>")[0]
        assert (tmp_path / "a" / "vpn" / "ccd" / "pc1").exists()

        # Reinstalled, it enrols a new key through host B: B revokes the old certificate (cluster-wide record).
        enrol(
            f"https://127.0.0.1:{server_b.port_number}/",
            agents.create_token("default", 3600, "pc1")[0],  # re-binding pc1: a token made for it
            root,
            str(tmp_path / "new"),
            "pc1",
            "192.168.1.10",
        )
        assert revoked_in(tmp_path / "b", old)
        service_a = _agent_api(settings_a, a)  # host A's own periodic step (every few seconds in serve)
        assert service_a is not None and service_a.vpn is not None
        service_a.flush_heartbeats()
        assert revoked_in(tmp_path / "a", old), "host A's OpenVPN refuses the old key"
        assert not (tmp_path / "a" / "vpn" / "ccd" / "pc1").exists()

        request_vpn(str(tmp_path / "new"))  # through B
        new = (tmp_path / "new" / "vpn.conf").read_text().split("<cert>\n")[1].split("</cert>")[0]
        x509.load_pem_x509_certificate(new.encode("ascii")).verify_directly_issued_by(service_a.vpn.ca)
        service_a.flush_heartbeats()
        assert (tmp_path / "a" / "vpn" / "ccd" / "pc1").exists() and not revoked_in(tmp_path / "a", new)
    finally:
        for aggregate, server in servers:
            blockingCallFromThread(running_reactor, server.stop)
            aggregate.database.dispose()


def test_real_openvpn_of_host_a_refuses_a_certificate_revoked_through_host_b(
    namespaces: tuple[str, str, str], tmp_path: Path, database: Database
) -> None:
    """OpenVPN (Debian) runs host A's configuration in a namespace; the node's certificate was issued through host B
    and opens A's tunnel; revoked through B, it is refused by A's OpenVPN after A's refresh (its CRL and ccd/)."""
    if shutil.which("openvpn") is None:
        pytest.fail("openvpn is not installed: scripts/test.sh installs it (apt-get install openvpn)")
    server_ns, agent_ns, _ = namespaces
    a = host(tmp_path, "a", database)
    copy_ca(tmp_path, "a", "b")
    b = host(tmp_path, "b", database)
    key = new_private_key()
    key_path = tmp_path / "node.key"
    key_path.write_bytes(private_key_pem(key))
    key_path.chmod(0o600)
    certificate, address = b.issue("far1", 1, key.public_key())
    a.refresh()
    (tmp_path / "server.conf").write_text(a.server_config(SERVER_ADDRESS, 1194))
    (tmp_path / "client.conf").write_text(client_config(SERVER_ADDRESS, 1194, a.ca_pem, certificate, str(key_path)))
    processes: list[subprocess.Popen[bytes]] = []

    def start(namespace: str, config: str, log: str) -> subprocess.Popen[bytes]:
        command = ["ip", "netns", "exec", namespace, "openvpn", "--config", str(tmp_path / config)]
        process = subprocess.Popen(command, stdout=open(tmp_path / log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        processes.append(process)
        return process

    def tunnel_address() -> bool:
        shown = subprocess.run(["ip", "-n", agent_ns, "-4", "address", "show"], capture_output=True, text=True)
        return f"inet {address}/16" in shown.stdout

    try:
        start(server_ns, "server.conf", "server.log")
        client = start(agent_ns, "client.conf", "client-1.log")
        eventually(tunnel_address, "the node's tunnel to host A comes up at its address")
        client.send_signal(signal.SIGTERM)
        client.wait(timeout=30)

        assert b.revoke_node("far1") is True
        a.refresh()
        start(agent_ns, "client.conf", "client-2.log")
        eventually(lambda: "certificate revoked" in (tmp_path / "server.log").read_text(), "host A refuses it")
        assert not tunnel_address()
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def crl_serials(directory: Path) -> set[int]:
    return {revoked.serial_number for revoked in x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())}


def test_a_crl_that_lacks_a_recorded_revocation_is_written_again(tmp_path: Path, database: Database) -> None:
    """What OpenVPN reads is crl.pem: a refresh compares it with the records, not revoked.json alone. (1) A host
    upgraded from the file-only VPN whose last revocation stopped between its two writes (revoked.json written, the
    CRL not); (2) crl.pem lost on a cluster host, which then restarts: the revoked serial is in the CRL after start."""
    later = lambda: time.time() + 60  # noqa: E731  (the files' timestamps settled)
    directory = tmp_path / "x" / "vpn"
    before = VpnCa(str(directory), "lab")  # the file-only VPN of an earlier version
    pem, _ = before.issue("n1", 1, new_private_key().public_key())
    before._write_crl([])  # the CRL as before the revocation...
    (directory / "revoked.json").write_text(json.dumps([serial(pem)]))  # ...revoked.json written: a stop in between
    (directory / "issued" / "n1.pem").unlink()
    upgraded = VpnCa(str(directory), "lab", VpnRecords(database), clock=later)
    assert serial(pem) in VpnRecords(database).state().revoked
    assert serial(pem) in crl_serials(directory), "the upgraded host's OpenVPN still takes the revoked certificate"

    second, _ = upgraded.issue("n2", 2, new_private_key().public_key())
    assert upgraded.revoke_node("n2") and serial(second) in crl_serials(directory)
    (directory / "crl.pem").unlink()
    VpnCa(str(directory), "lab", VpnRecords(database), clock=later).refresh()
    assert {serial(pem), serial(second)} <= crl_serials(directory)


def test_a_file_only_revocation_writes_the_crl_first_and_a_lost_crl_is_written_from_revoked_json(
    tmp_path: Path,
) -> None:
    """SQLite's one host keeps files only: a revocation's CRL is written before revoked.json (the record of what the
    CRL holds), and a start that finds no crl.pem writes one holding what revoked.json says is revoked."""
    directory = tmp_path / "solo" / "vpn"
    ca = VpnCa(str(directory), "lab")
    pem, _ = ca.issue("n3", 3, new_private_key().public_key())
    written: list[str] = []
    original = vpn_module._write

    def recording(path: Path, data: bytes, private: bool = False) -> None:
        written.append(path.name)
        original(path, data, private)

    vpn_module._write = recording  # type: ignore[assignment]
    try:
        assert ca.revoke_node("n3")
    finally:
        vpn_module._write = original  # type: ignore[assignment]
    assert written.index("crl.pem") < written.index("revoked.json"), written
    (directory / "crl.pem").unlink()
    VpnCa(str(directory), "lab")
    assert serial(pem) in crl_serials(directory)
