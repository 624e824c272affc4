"""A removed node's VPN number is not given to another node at once: OpenVPN checks the CRL only at a handshake, so
the removed node's tunnel may still be up, at that address, until the server's next renegotiation (reneg-sec) and
the end of its old key (tran-window). The removal records the number it gives back (vpn_number_release, migration
0030, in its own transaction), the revocation records it too (vpn_revoked.vpn_number, migration 0029; on SQLite
too, where the files are the VPN's CRL), and registrations skip it for VPN_NUMBER_QUARANTINE_S after either. On
SQLite (file-only VPN) and PostgreSQL (the cluster's records), through ``node remove``'s revocation; the clock of the
registrations is the test's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from sfa_omf.agents.node import enrol
from sfa_omf.agents.service import key_sha256
from sfa_omf.agents.vpn import VpnCa, node_address
from sfa_omf.calendar import agents as agents_module
from sfa_omf.calendar.agents import (
    VPN_KEY_TRANSITION_S,
    VPN_NUMBER_QUARANTINE_S,
    VPN_RENEGOTIATION_S,
    Agents,
    Enrolment,
)
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.vpn_records import VpnRecords
from sfa_omf.cli import main
from sfa_omf.cli_agents import cluster_vpn_ca, revoke_vpn_of_removed_node
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.pki import new_private_key
from tests.agents.conftest import Lab
from tests.calendar.conftest import fresh_database, node_urn


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = fresh_database(request.param, tmp_path)
    yield made
    made.dispose()


class Clock:
    """The registrations' time, which the test moves."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def settings_for(database: Database, tmp_path: Path) -> SimpleNamespace:
    """What ``node remove``'s revocation reads of the settings."""
    return SimpleNamespace(data_dir=str(tmp_path), calendar_url=database.url, interface_hrn="lab")


def enrol_with_vpn(agents: Agents, settings: SimpleNamespace, hostname: str) -> int:
    """Register ``hostname``'s agent and issue its VPN certificate as the server does (the cluster's records on
    PostgreSQL, the files on SQLite); its VPN number."""
    key = new_private_key()
    token, _ = agents.create_token("default", 600)
    record, _ = agents.register(
        Enrolment(token, hostname, node_urn(hostname), key_sha256(key.public_key())), lambda _urn: ("", "")
    )
    ca = cluster_vpn_ca(settings)
    _, address = ca.issue(hostname, record.number, key.public_key(), lambda: True)
    assert address == str(node_address(record.number))
    return record.number


def remove(database: Database, settings: SimpleNamespace, hostname: str) -> None:
    """``sfa-omf node remove``'s two steps for an agent's node: out of the calendar, its VPN certificate revoked."""
    Inventory(database).remove_node(node_urn(hostname))
    assert revoke_vpn_of_removed_node(settings, hostname)


def test_a_removed_nodes_number_goes_to_no_other_node_until_its_quarantine_passed(
    database: Database, tmp_path: Path
) -> None:
    clock = Clock()
    agents = Agents(database, clock=clock)
    settings = settings_for(database, tmp_path)
    assert [enrol_with_vpn(agents, settings, name) for name in ("a1", "a2", "a3")] == [1, 2, 3]

    remove(database, settings, "a2")
    clock.now = utcnow()  # counted from the removal (enrolling three nodes may take seconds on a loaded machine)
    # At once: the removed node's tunnel may still be up at number 2's address.
    assert enrol_with_vpn(agents, settings, "a4") == 4
    clock.now += timedelta(seconds=VPN_NUMBER_QUARANTINE_S - 2)
    assert enrol_with_vpn(agents, settings, "a5") == 5
    # Once the quarantine has passed since the revocation, it is the lowest free number again.
    clock.now += timedelta(seconds=4)
    assert enrol_with_vpn(agents, settings, "a6") == 2
    assert enrol_with_vpn(agents, settings, "a7") == 6


def test_the_server_configuration_renegotiates_often_and_drops_old_keys_soon(tmp_path: Path) -> None:
    """OpenVPN's defaults (an hour each) kept a revoked node's tunnel up to two hours."""
    lines = VpnCa(str(tmp_path / "vpn"), "lab").server_config("10.0.0.1", 1194).splitlines()
    assert f"reneg-sec {VPN_RENEGOTIATION_S}" in lines
    assert f"tran-window {VPN_KEY_TRANSITION_S}" in lines
    assert VPN_RENEGOTIATION_S <= 60 and VPN_KEY_TRANSITION_S <= 60
    short = VpnCa(str(tmp_path / "vpn"), "lab").server_config("10.0.0.1", 1194, 4, 3).splitlines()
    assert "reneg-sec 4" in short and "tran-window 3" in short


def test_when_only_quarantined_numbers_are_free_the_refusal_says_when_one_is(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VPN of three numbers: with one held by a node removed a moment ago, the fourth node is told (503, which the
    agent retries) when it can have it; then it gets it."""
    monkeypatch.setattr(agents_module, "VPN_NUMBERS", 3)
    clock = Clock()
    agents = Agents(database, clock=clock)
    settings = settings_for(database, tmp_path)
    assert [enrol_with_vpn(agents, settings, name) for name in ("a1", "a2", "a3")] == [1, 2, 3]
    remove(database, settings, "a1")
    with database.read() as session:
        (revoked_s,) = session.execute(text("SELECT revoked_s FROM vpn_revoked WHERE vpn_number = 1")).one()

    with pytest.raises(GeniError) as refused:
        enrol_with_vpn(agents, settings, "a4")
    assert refused.value.reason is Reason.BUSY
    frees_at = datetime.fromtimestamp(revoked_s + VPN_NUMBER_QUARANTINE_S, clock.now.tzinfo)
    assert f"the next one is free at {format_time(frees_at)}" in refused.value.message
    clock.now = frees_at
    assert enrol_with_vpn(agents, settings, "a4") == 1


def test_a_re_issue_keeps_the_node_its_number_and_a_removal_quarantines_it_before_its_revocation(
    database: Database, tmp_path: Path
) -> None:
    """Asking for a new VPN certificate revokes the previous one, at the node's own number, which stays the node's. A
    removal gives the number back in quarantine at once, in its own transaction: the revocation of the node's
    certificate comes after it (node remove's next step, which may fail or come late), and a registration in between
    got the address of the tunnel still up (a review found it)."""
    clock = Clock()
    agents = Agents(database, clock=clock)
    settings = settings_for(database, tmp_path)
    assert [enrol_with_vpn(agents, settings, name) for name in ("a1", "a2")] == [1, 2]
    ca = cluster_vpn_ca(settings)
    ca.issue("a1", 1, new_private_key().public_key())  # a1's previous certificate revoked (re-issue)
    Inventory(database).remove_node(node_urn("a2"))  # its certificate not revoked yet
    clock.now = utcnow()  # counted from the removal
    assert enrol_with_vpn(agents, settings, "a3") == 3
    clock.now += timedelta(seconds=VPN_NUMBER_QUARANTINE_S + 2)
    assert enrol_with_vpn(agents, settings, "a4") == 2


def test_the_cluster_records_keep_the_number_of_each_revocation(tmp_path: Path) -> None:
    """PostgreSQL: a node's revocation through the records (any host) carries its certificate's number."""
    database = fresh_database("postgresql", tmp_path)
    try:
        records = VpnRecords(database)
        ca = VpnCa(str(tmp_path / "vpn"), "lab", records)
        ca.issue("n1", 7, new_private_key().public_key())
        assert ca.revoke_node("n1")
        with database.read() as session:
            assert session.execute(text("SELECT hostname, vpn_number FROM vpn_revoked")).all() == [("n1", 7)]
    finally:
        database.dispose()


def test_vpn_revoke_records_the_number_for_its_quarantine(lab: Lab, tmp_path: Path) -> None:
    """``sfa-omf node vpn-revoke`` (what finishes a removal whose revocation failed) records the number with the
    revocation, on SQLite's file-only VPN as with the cluster's records: its quarantine starts then."""
    key = new_private_key()
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc7")
    number = lab.agents.node_number(enrolled.node)
    cluster_vpn_ca(lab.settings).issue("pc7", number, key.public_key())
    assert main(["node", "vpn-revoke", "pc7", "--config", lab.settings_path]) == 0
    with lab.aggregate.database.read() as session:
        assert session.execute(text("SELECT hostname, vpn_number FROM vpn_revoked")).all() == [("pc7", number)]
