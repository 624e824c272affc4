"""The node VPN when a step fails part-way (agents/vpn.py with calendar/vpn_records.py on a real PostgreSQL): a call
that fails issues nothing and revokes nothing, in the records or in this host's files. The faults are real: a
directory in the way of the temporary file a write replaces a VPN file with makes that write fail with an OSError,
as a full or read-only disk would. Also: a revocation stopped between its two writes stays revoked; a node removed
while its certificate is being issued gets none (or the removal revokes it); a request racing the node's
re-registration ends with BUSY instead of waiting for ever. The moments of the races are made real by holding the
locks the code takes (the VPN file lock, the agent's row)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from sqlalchemy import text

from sfa_omf.agents.service import key_sha256
from sfa_omf.agents.vpn import VpnCa
from sfa_omf.calendar.agents import AgentRecord, Agents, Enrolment
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.vpn_records import VpnRecords
from sfa_omf.cli_agents import revoke_vpn_of_removed_node
from sfa_omf.errors import GeniError, Reason
from sfa_omf.trust.pki import new_private_key, private_key_pem
from tests.calendar.conftest import fresh_database, node_urn


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = fresh_database("postgresql", tmp_path)
    yield db
    db.dispose()


def settled() -> float:
    """A clock a minute ahead: the files' timestamps count as settled (vpn.SETTLED_S) without waiting."""
    return time.time() + 60


def serial(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number


def crl_serials(directory: Path) -> set[int]:
    return {revoked.serial_number for revoked in x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())}


def test_a_reissue_that_fails_writing_its_files_revokes_and_records_nothing(tmp_path: Path, database: Database) -> None:
    """The node's working certificate stays current and unrevoked (records, CRL, issued/), also after the next
    refreshes of this host and of a process reading its files anew."""
    records = VpnRecords(database)
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab", records, clock=settled)
    key = new_private_key()
    working, _ = ca.issue("n1", 1, key.public_key())
    (directory / "issued" / "n1.pem.tmp").mkdir()  # the new certificate's file cannot be written

    with pytest.raises((GeniError, OSError)) as failed:
        ca.issue("n1", 1, key.public_key())

    state = records.state()
    assert [(certificate.hostname, certificate.serial) for certificate in state.issued] == [("n1", serial(working))]
    assert serial(working) not in state.revoked
    assert serial(working) not in crl_serials(directory), "OpenVPN still lets the node's working certificate in"
    assert (directory / "issued" / "n1.pem").read_text() == working
    ca.refresh()
    VpnCa(str(directory), "lab", records, clock=settled)  # another process: reads the files, records what they add
    assert records.state().revoked == state.revoked and records.state().issued == state.issued
    # The agent is told to retry (503), not given an internal error.
    assert isinstance(failed.value, GeniError) and failed.value.reason is Reason.UNAVAILABLE
    assert "no VPN certificate was issued" in failed.value.message


def test_a_first_issue_that_fails_writing_its_files_leaves_no_certificate(tmp_path: Path, database: Database) -> None:
    """No row, no ccd/ entry and no issued/ file of the node: nothing lets it in, nothing is recorded later."""
    records = VpnRecords(database)
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab", records, clock=settled)
    (directory / "ccd" / "n2.tmp").mkdir()  # the node's client config cannot be written

    with pytest.raises((GeniError, OSError)):
        ca.issue("n2", 2, new_private_key().public_key())

    assert records.state().issued == ()
    assert not (directory / "ccd" / "n2").exists() and not (directory / "issued" / "n2.pem").exists()
    VpnCa(str(directory), "lab", records, clock=settled)
    assert records.state().issued == ()


def _stopped_after_the_crl(ca: VpnCa, pem: str) -> None:
    """What a revocation of ``pem`` leaves when its command is stopped between its two writes: the CRL written first
    (VpnCa._revoke), revoked.json not yet, the node's ccd/ and issued/ entries still there."""
    ca._write_crl([*ca._revoked_here(), serial(pem)])


def test_a_revocation_stopped_after_its_crl_stays_revoked_at_the_next_one(tmp_path: Path) -> None:
    """The file-only VPN (SQLite's one host): the next revocation writes the CRL from revoked.json and the CRL."""
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    first, _ = ca.issue("n1", 1, new_private_key().public_key())
    second, _ = ca.issue("n2", 2, new_private_key().public_key())
    _stopped_after_the_crl(ca, first)
    assert ca.revoke_node("n2")
    assert {serial(first), serial(second)} <= crl_serials(directory), "OpenVPN lets n1's revoked certificate in again"


def test_a_revocation_only_in_the_crl_is_recorded_for_the_cluster(tmp_path: Path, database: Database) -> None:
    """A host upgraded from the file-only VPN whose last revocation was stopped after its CRL: its first start with
    the database records the revocation (every host's CRL gets it) instead of writing the CRL without it."""
    directory = tmp_path / "vpn"
    before = VpnCa(str(directory), "lab")
    pem, _ = before.issue("n1", 1, new_private_key().public_key())
    _stopped_after_the_crl(before, pem)
    records = VpnRecords(database)
    VpnCa(str(directory), "lab", records, clock=settled)
    assert serial(pem) in records.state().revoked
    assert serial(pem) in crl_serials(directory)
    assert "n1" not in {certificate.hostname for certificate in records.state().issued}


def test_a_node_removed_while_its_certificate_is_being_issued_gets_none(tmp_path: Path, database: Database) -> None:
    """The agent asked for a VPN certificate (authenticated, its node number read), and before the certificate was
    recorded the operator removed the node and revoked what it had (nothing yet): the certificate must not be
    recorded afterwards, or the removed node would open the tunnel for a year. The moment is made real by holding
    the host's VPN file lock, which the issue waits for, while the removal runs."""
    agents = Agents(database)
    token, _ = agents.create_token("default", 600)
    key = new_private_key()
    agent, _ = agents.register(
        Enrolment(token, "n1", node_urn("n1"), key_sha256(key.public_key())), lambda _urn: ("", "")
    )
    records = VpnRecords(database)
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab", records, clock=settled)

    def removal() -> None:
        Inventory(database).remove_node(node_urn("n1"))
        assert records.revoke_current("n1") is None  # what the removal revokes: nothing issued yet

    # (with records, the agent's row in the database is what is checked, not what ``enrolled`` says)
    outcome = issued_while(directory, lambda: ca.issue("n1", agent.number, key.public_key(), lambda: True), removal)

    assert records.state().issued == (), "the removed node holds a VPN certificate"
    assert not (directory / "ccd" / "n1").exists()
    assert isinstance(outcome[0], GeniError) and outcome[0].reason is Reason.NOT_FOUND


def issued_while(
    directory: Path, issue: Callable[[], tuple[str, str]], removal: Callable[[], object]
) -> list[BaseException | tuple[str, str]]:
    """What ``issue`` answered (or raised) when ``removal`` ran while the issue waited for the VPN file lock: the
    test holds the lock, starts the issue, removes, then lets the issue go."""
    outcome: list[BaseException | tuple[str, str]] = []

    def run() -> None:
        try:
            outcome.append(issue())
        except BaseException as exc:  # the test looks at what it was
            outcome.append(exc)

    with open(directory / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        issuing = threading.Thread(target=run)
        issuing.start()
        removal()
    issuing.join()
    return outcome


def _lock_waits(database: Database) -> int:
    """How many sessions of this test's database wait for a lock now (other databases of the server, other tests'
    or a CI's, are not counted)."""
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    return int(database.fetch_all(text(waiting))[0][0])


def test_a_certificate_asked_during_the_nodes_re_registration_does_not_hang_either(
    tmp_path: Path, database: Database
) -> None:
    """A node re-bound to a new key (its registration holds the agent's row and, before its commit, revokes the old
    key's certificate and refreshes this host's files under the VPN file lock) while its old key asks for a VPN
    certificate (which holds the file lock and waits for the agent's row): the certificate request gives up with
    BUSY, and the registration completes with the old key's certificate revoked."""
    agents = Agents(database)
    old_key, new_key = new_private_key(), new_private_key()
    first, _ = agents.create_token("default", 600)
    agent, _ = agents.register(
        Enrolment(first, "n1", node_urn("n1"), key_sha256(old_key.public_key())), lambda _urn: ("", "")
    )
    records = VpnRecords(database)
    records.lock_timeout_s = 1
    ca = VpnCa(str(tmp_path / "vpn"), "lab", records, clock=settled)
    working, _ = ca.issue("n1", agent.number, old_key.public_key(), enrolled=lambda: True)
    registration_written, certificate_waiting = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | object] = {}

    def revoke_old_key(_record: object, _exclusive: object) -> None:  # what AgentService's registration does
        registration_written.set()
        certificate_waiting.wait()
        ca.revoke_other_key("n1", new_key.public_key())

    def register() -> None:
        second, _ = agents.create_token("default", 600, "n1")  # re-binding n1: made for it
        enrolment = Enrolment(second, "n1", node_urn("n1"), key_sha256(new_key.public_key()))
        try:
            outcome["register"] = agents.register(enrolment, lambda _urn: ("", ""), revoke_old_key)
        except BaseException as exc:  # the test looks at what it was
            outcome["register"] = exc

    def issue() -> None:
        try:
            outcome["issue"] = ca.issue("n1", agent.number, old_key.public_key(), enrolled=lambda: True)
        except BaseException as exc:  # the test looks at what it was
            outcome["issue"] = exc

    registering = threading.Thread(target=register, daemon=True)
    registering.start()
    assert registration_written.wait(60)
    issuing = threading.Thread(target=issue, daemon=True)
    issuing.start()
    deadline = time.monotonic() + 60
    while _lock_waits(database) == 0:  # the certificate request waits for the agent's row (a bound for failing only)
        assert time.monotonic() < deadline and issuing.is_alive(), outcome
        time.sleep(0.05)
    certificate_waiting.set()
    registering.join(120)
    issuing.join(120)  # (bounds for failing only: without a bound on the wait, both wait for ever)
    assert not registering.is_alive() and not issuing.is_alive(), "the registration and the request wait for ever"

    assert isinstance(outcome["issue"], GeniError) and outcome["issue"].reason is Reason.BUSY, outcome
    assert not isinstance(outcome["register"], BaseException), outcome
    state = records.state()
    assert serial(working) in state.revoked and state.issued == ()
    assert serial(working) in crl_serials(tmp_path / "vpn")


def _sqlite_agent(tmp_path: Path, hostname: str) -> tuple[Database, AgentRecord]:
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    agents = Agents(database)
    token, _ = agents.create_token("default", 600)
    agent, _ = agents.register(Enrolment(token, hostname, node_urn(hostname), "00" * 32), lambda _urn: ("", ""))
    return database, agent


def test_a_node_removed_while_its_certificate_is_being_issued_gets_none_on_sqlite(tmp_path: Path) -> None:
    """The file-only VPN (SQLite's one host): the agent is asked again under the VPN file lock, which the issue
    waits for here (held by the test) while the node is removed."""
    database, agent = _sqlite_agent(tmp_path, "n1")
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    agents = Agents(database)

    def enrolled() -> bool:  # what AgentService.vpn_certificate asks
        return [row[0] for row in agents.names()] == ["n1"]

    outcome = issued_while(
        directory,
        lambda: ca.issue("n1", agent.number, new_private_key().public_key(), enrolled),
        lambda: Inventory(database).remove_node(node_urn("n1")),
    )

    assert not (directory / "issued" / "n1.pem").exists() and not (directory / "ccd" / "n1").exists()
    assert isinstance(outcome[0], GeniError) and outcome[0].reason is Reason.NOT_FOUND
    database.dispose()


def _waiting_for(lock: Path) -> bool:
    """True when a process waits for an flock of ``lock`` (the kernel lists waiters with "->" in /proc/locks)."""
    inode = str(lock.stat().st_ino)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].rsplit(":", 1)[-1] == inode:
            return True
    return False


def test_the_removal_revokes_a_certificate_issued_as_the_node_is_removed_on_sqlite(tmp_path: Path) -> None:
    """The issue found the node enrolled (its check paused there by the test) and the node is removed before its
    files are written: the removal's revocation waits for the issue and revokes what it wrote."""
    database, agent = _sqlite_agent(tmp_path, "n1")
    settings = SimpleNamespace(data_dir=str(tmp_path), calendar_url=database.url, interface_hrn="lab")
    ca = VpnCa(str(tmp_path / "vpn"), "lab")
    checked, removed = threading.Event(), threading.Event()
    issued: list[tuple[str, str]] = []
    revoked: list[bool] = []

    def enrolled() -> bool:
        checked.set()
        removed.wait()  # the node is removed after the check, before the files are written
        return True

    key = new_private_key().public_key()
    issuing = threading.Thread(target=lambda: issued.append(ca.issue("n1", agent.number, key, enrolled)))
    issuing.start()
    checked.wait()
    Inventory(database).remove_node(node_urn("n1"))
    revoking = threading.Thread(target=lambda: revoked.append(revoke_vpn_of_removed_node(settings, "n1")))
    revoking.start()
    deadline = time.monotonic() + 60
    while revoking.is_alive() and not _waiting_for(tmp_path / "vpn" / "lock"):  # (a bound for failing only)
        assert time.monotonic() < deadline, "the removal's revocation neither finished nor waits for the lock"
        time.sleep(0.01)
    removed.set()
    issuing.join()
    revoking.join()

    assert revoked == [True], "the removal's revocation found nothing to revoke"
    assert serial(issued[0][0]) in crl_serials(tmp_path / "vpn")
    assert not (tmp_path / "vpn" / "ccd" / "n1").exists()
    database.dispose()


def test_a_reissue_with_thousands_of_revoked_serials_keeps_every_one_revoked(tmp_path: Path) -> None:
    """The file-only VPN with a long CRL (revoked.json and serials in the CRL only, a revocation stopped after its
    CRL): a re-issue revokes the previous certificate and keeps every serial revoked, each once."""
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    listed = list(range(10_000, 13_000))
    only_in_crl = list(range(20_000, 20_050))
    (directory / "revoked.json").write_text(json.dumps(listed))
    ca._write_crl(listed + only_in_crl)
    key = new_private_key().public_key()
    first, _ = ca.issue("n1", 1, key)

    ca.issue("n1", 1, key)

    expected = [*listed, *only_in_crl, serial(first)]
    assert json.loads((directory / "revoked.json").read_text()) == expected
    assert crl_serials(directory) == set(expected)


# What the crash stand-in's child process runs: the issue of the test's VpnCa, whose process dies (os._exit) right
# after this host's files are written for the new certificate and before the rows are committed.
_DIES_BEFORE_THE_COMMIT = """
import os, sys, time
from pathlib import Path
from sfa_omf.agents.vpn import VpnCa
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.vpn_records import VpnRecords
from sfa_omf.trust.pki import load_private_key

url, directory, key_file = sys.argv[1:4]
ca = VpnCa(directory, "lab", VpnRecords(Database(url)), clock=lambda: time.time() + 60)
write_files = VpnCa._write_files_before_commit

def write_files_then_die(self, state):
    write_files(self, state)
    os._exit(9)

VpnCa._write_files_before_commit = write_files_then_die
ca.issue("n1", 1, load_private_key(Path(key_file).read_bytes()).public_key())
"""


def test_a_reissue_whose_process_dies_before_the_commit_leaves_the_working_certificate(
    tmp_path: Path, database: Database
) -> None:
    """CrashBeforeCommitStandIn: the issuing process is killed (os._exit in a child process, standing in for a crash
    or a power cut, which a test cannot cause at that exact moment) between writing this host's files and the
    commit. The next refresh of the host must not take what the dead call left in the files for an operator's
    revocation: the node's working certificate stays current and out of the CRL."""
    records = VpnRecords(database)
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab", records, clock=settled)
    key = new_private_key()
    (tmp_path / "node.key").write_bytes(private_key_pem(key))
    working, _ = ca.issue("n1", 1, key.public_key())

    child = [sys.executable, "-c", _DIES_BEFORE_THE_COMMIT, database.url, str(directory), str(tmp_path / "node.key")]
    died = subprocess.run(child, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr

    VpnCa(str(directory), "lab", records, clock=settled)  # another process of the host starts: reads the files
    state = records.state()
    assert [(certificate.hostname, certificate.serial) for certificate in state.issued] == [("n1", serial(working))]
    assert serial(working) not in state.revoked, "the node's working certificate was revoked"
    assert serial(working) not in crl_serials(directory), "OpenVPN refuses the node's working certificate"
    assert (directory / "issued" / "n1.pem").read_text() == working


def test_a_file_only_reissue_that_fails_writing_its_files_keeps_the_working_certificate(tmp_path: Path) -> None:
    """The file-only VPN (SQLite's one host): the new certificate's issued/ file cannot be written (a directory in
    the way of its temporary file, as a full disk would): the working certificate stays in issued/ and out of the
    CRL, its address stays, and the agent is told to retry (503) instead of an internal error."""
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    key = new_private_key().public_key()
    working, _ = ca.issue("n1", 1, key)
    (directory / "issued" / "n1.pem.tmp").mkdir()

    with pytest.raises(GeniError) as failed:
        ca.issue("n1", 1, key)

    assert failed.value.reason is Reason.UNAVAILABLE and "no VPN certificate was issued" in failed.value.message
    assert serial(working) not in crl_serials(directory), "OpenVPN refuses the node's working certificate"
    assert (directory / "issued" / "n1.pem").read_text() == working
    assert (directory / "ccd" / "n1").exists()
    (directory / "issued" / "n1.pem.tmp").rmdir()
    second, _ = ca.issue("n1", 1, key)  # once the fault is gone: the new one current, the working one revoked
    assert serial(working) in crl_serials(directory) and serial(second) not in crl_serials(directory)
    assert (directory / "issued" / "n1.pem").read_text() == second and (directory / "ccd" / "n1").exists()


def test_a_certificate_asked_with_the_old_key_after_the_node_is_re_bound_is_refused(
    tmp_path: Path, database: Database
) -> None:
    """The request was authenticated with the node's old key, and the node's re-binding to a new key committed before
    the certificate is recorded: the old key gets no certificate (it would open the tunnel for a year)."""
    agents = Agents(database)
    old_key, new_key = new_private_key(), new_private_key()
    first, _ = agents.create_token("default", 600)
    enrolment = Enrolment(first, "n1", node_urn("n1"), key_sha256(old_key.public_key()))
    agent, _ = agents.register(enrolment, lambda _urn: ("", ""))
    records = VpnRecords(database)
    ca = VpnCa(str(tmp_path / "vpn"), "lab", records, clock=settled)
    # The re-binding (a token made for n1), committed after the request's authentication.
    second, _ = agents.create_token("default", 600, "n1")
    agents.register(Enrolment(second, "n1", node_urn("n1"), key_sha256(new_key.public_key())), lambda _urn: ("", ""))

    with pytest.raises(GeniError) as refused:
        ca.issue("n1", agent.number, old_key.public_key(), enrolled=lambda: True)

    assert refused.value.reason is Reason.NOT_FOUND
    assert records.state().issued == () and not (tmp_path / "vpn" / "ccd" / "n1").exists()
    pem, _ = ca.issue("n1", agent.number, new_key.public_key(), enrolled=lambda: True)  # the new key gets one
    assert [certificate.serial for certificate in records.state().issued] == [serial(pem)]
