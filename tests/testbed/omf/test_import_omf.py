"""``sfa-omf node import --from-omf URL`` against a real HTTPS broker answering omf_sfa's /resources/nodes: another
sfa-omf instance (type = omf) with nodes (interfaces, cmc) and leases. The nodes arrive with what the controllers
read, the live leases are booked through the calendar (a cancelled one is left out), a re-run updates and books
nothing twice, a lease that overlaps one already booked here is refused with the calendar's reason (no double
booking), and a broker that cannot be read changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.testbed.omf.rest import omf_inventory
from sfa_omf.times import format_time, utcnow
from tests.ports import free_port

INTERFACES = [
    {"role": "control", "mac": "00:03:1d:0d:4b:96", "ip": {"address": "10.0.1.1", "netmask": "255.255.255.0"}}
]
CMC = {"ip": {"address": "10.1.0.1", "netmask": "255.255.255.0"}, "mac": "00:03:1d:0d:4b:97"}


@dataclass
class Broker:
    url: str
    cert: str
    key: str
    ca: str
    aggregate: Any


@pytest.fixture(scope="module")
def broker(running_reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The omf_sfa broker a testbed moves from: another sfa-omf (type = omf) with two nodes and three leases."""
    directory = tmp_path_factory.mktemp("broker") / "nitos"
    init_directory(str(directory), "nitos", ("ann",))
    settings = replace(read_config(str(directory / "sfa-omf.conf")), aggregate_type="omf")
    aggregate = build_aggregate(settings)
    for name in ("node1", "node2"):
        properties = {"interfaces": INTERFACES, "cmc": CMC, "hostname": f"{name}.nitos"}
        aggregate.inventory.add_node(
            NodeSpec(f"urn:publicid:IDN+nitos+node+{name}", name, hardware_type="icarus", properties=properties)
        )
    inventory = omf_inventory(aggregate, "https://broker")
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)

    def lease(account: str, nodes: list[str], hours: int) -> str:
        body = {
            "name": f"{account}-{hours}",
            "valid_from": format_time(start + timedelta(hours=hours)),
            "valid_until": format_time(start + timedelta(hours=hours + 1)),
            "account_attributes": {"name": account},
            "components": [{"name": node} for node in nodes],
        }
        return inventory.book_lease(body).id

    lease("alice", ["node1", "node2"], 0)
    lease("bob", ["node2"], 2)
    cancelled = lease("carol", ["node1"], 4)
    aggregate.bookings.cancel(cancelled)
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        # Read as the operator moving the testbed does (its authority's certificate): an experimenter's certificate
        # sees the accounts of their own slices only.
        yield Broker(
            f"https://127.0.0.1:{server.port_number}",
            LocalAuthority.gid_path(str(directory), "nitos"),
            LocalAuthority.key_path(str(directory), "nitos"),
            LocalAuthority.gid_path(str(directory), "nitos"),
            aggregate,
        )
    finally:
        blockingCallFromThread(running_reactor, server.stop)


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(tmp_path / "site"), "--authority", "nitos", "--no-demo"]) == 0
    capsys.readouterr()
    return str(tmp_path / "site" / "sfa-omf.conf")


def run(capsys: pytest.CaptureFixture[str], broker: Broker, config: str, *extra: str) -> tuple[int, str, str]:
    argv = ["node", "import", "--config", config, "--from-omf", broker.url, "--cert", broker.cert, "--key", broker.key]
    code = main([*argv, *(extra or ("--ca", broker.ca))])
    out, err = capsys.readouterr()
    return code, out, err


def leases_here(config: str) -> list[tuple[str, str, tuple[str, ...]]]:
    database = Database(read_config(config).calendar_url)
    bookings = Bookings(database, Policy())
    return sorted(
        (lease.slice_urn, format_time(lease.start), tuple(sorted(lease.nodes)))
        for lease in bookings.leases()
        if lease.state in ("allocated", "provisioned")
    )


def test_the_inventory_and_live_leases_arrive_once(
    broker: Broker, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, broker, config)
    assert code == 0, err
    assert "2 node(s) added, 0 updated, 0 unchanged" in out
    assert "2 lease(s) booked, 0 already booked, 0 refused, 1 past or cancelled left out" in out
    assert "2/2 nodes" in err and "2/2 leases" in err  # the progress bars
    nodes = {node.component_name: node for node in Inventory(Database(read_config(config).calendar_url)).list_nodes()}
    assert sorted(nodes) == ["node1", "node2"]
    node1 = nodes["node1"]
    assert node1.component_id == "urn:publicid:IDN+nitos+node+node1" and node1.hardware_type == "icarus"
    assert node1.properties["interfaces"] == INTERFACES and node1.properties["cmc"] == CMC
    assert node1.properties["hostname"] == "node1.nitos" and node1.properties["uuid"]
    booked = leases_here(config)
    assert [(slice_urn, nodes) for slice_urn, _, nodes in booked] == [
        (
            "urn:publicid:IDN+nitos+slice+alice",
            ("urn:publicid:IDN+nitos+node+node1", "urn:publicid:IDN+nitos+node+node2"),
        ),
        ("urn:publicid:IDN+nitos+slice+bob", ("urn:publicid:IDN+nitos+node+node2",)),
    ]

    # Again: the same nodes updated in place, the same leases found, nothing twice.
    code, out, err = run(capsys, broker, config)
    assert code == 0, err
    assert "0 node(s) added" in out and "0 lease(s) booked, 2 already booked, 0 refused" in out
    assert leases_here(config) == booked


def test_a_node_an_older_import_stored_under_another_spelling_is_updated_and_booked(
    broker: Broker, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker's URN in its canonical spelling finds the node stored as an older import spelled it: updated, not
    added again, and the broker's leases booked on it (they named a node the calendar does not have)."""
    old_spelling = "urn:publicid:idn+nitos+node+node1"
    Inventory(Database(read_config(config).calendar_url)).add_node(NodeSpec(old_spelling, "node1"))
    code, out, err = run(capsys, broker, config)
    assert code == 0, err
    assert "1 node(s) added, 1 updated, 0 unchanged" in out
    assert "2 lease(s) booked, 0 already booked, 0 refused" in out
    nodes = Inventory(Database(read_config(config).calendar_url)).list_nodes()
    assert sorted(node.component_id for node in nodes) == ["urn:publicid:IDN+nitos+node+node2", old_spelling]
    assert [nodes for _, _, nodes in leases_here(config)] == [
        ("urn:publicid:IDN+nitos+node+node2", old_spelling),
        ("urn:publicid:IDN+nitos+node+node2",),
    ]


def test_a_lease_that_overlaps_one_booked_here_is_refused_and_the_rest_booked(
    broker: Broker, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = read_config(config)
    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec("urn:publicid:IDN+nitos+node+node2", "node2"))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=5)  # bob's slot at the broker
    omf_inventory(aggregate, "https://here").book_lease(
        {
            "valid_from": format_time(start),
            "valid_until": format_time(start + timedelta(hours=1)),
            "account_attributes": {"name": "dave"},
            "components": [{"name": "node2"}],
        }
    )
    code, out, err = run(capsys, broker, config)
    assert code == 1
    assert "1 lease(s) booked, 0 already booked, 1 refused" in out
    assert "refused:" in err and "node2" in err
    slices = [slice_urn for slice_urn, _, _ in leases_here(config)]
    assert sorted(slices) == ["urn:publicid:IDN+nitos+slice+alice", "urn:publicid:IDN+nitos+slice+dave"]


def test_a_broker_certificate_our_ca_did_not_sign_is_refused(
    broker: Broker, config: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    init_directory(str(tmp_path / "other"), "other", ())
    code, _, err = run(capsys, broker, config, "--ca", LocalAuthority.gid_path(str(tmp_path / "other"), "other"))
    assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in err
    assert leases_here(config) == []


def test_insecure_skips_the_check_of_the_brokers_certificate(
    broker: Broker, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, broker, config, "--insecure")
    assert code == 0, err
    assert "2 lease(s) booked" in out


def test_a_broker_that_cannot_be_read_changes_nothing(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    code = main(["node", "import", "--config", config, "--from-omf", url, "--insecure"])
    _, err = capsys.readouterr()
    assert code != 0 and f"cannot read {url}/resources/nodes" in err
    assert Inventory(Database(read_config(config).calendar_url)).list_nodes() == []


USER_URN_NODE = b'{"resource_response": {"resources": [{"name": "a", "urn": "urn:publicid:IDN+x+user+a"}]}}'


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>not json</html>", "did not answer omf_sfa's resource_response"),
        (b'{"resource_response": {"resource": {}}}', "did not answer omf_sfa's resource_response"),
        (b'{"resource_response": {"resources": {"name": "node1"}}}', "resources is not a list of nodes"),
        (b'{"resource_response": {"resources": [{"urn": "urn:publicid:IDN+x+node+a"}]}}', "node #1 has no name"),
        (USER_URN_NODE, "not a node URN"),
    ],
)
def test_an_answer_that_is_not_omf_sfas_is_refused_with_what_is_wrong(body: bytes, words: str) -> None:
    from sfa_omf.errors import BadArgs
    from sfa_omf.testbed.omf.importer import node_entries, nodes_of

    with pytest.raises(BadArgs) as refused:
        node_entries(nodes_of(body, "https://broker/resources/nodes"), "nitos", "https://broker/resources/nodes")
    assert words in refused.value.message


def test_a_node_without_a_urn_is_named_under_this_authority_as_the_oar_import_does() -> None:
    """The broker's name is the URN's node name, dots and all (made from "<authority>.<name>", a name node1.lab was
    read as node "lab" of authority plc:inria:node1)."""
    from sfa_omf.testbed.omf.importer import node_entries

    entries = node_entries([{"name": "node1.lab"}, {"name": "n2"}], "plc.inria", "https://broker/resources/nodes")
    assert [entry.component_id for entry in entries] == [
        "urn:publicid:IDN+plc:inria+node+node1.lab",
        "urn:publicid:IDN+plc:inria+node+n2",
    ]


def test_a_lease_the_calendar_cannot_read_is_reported_not_fatal() -> None:
    from sfa_omf.testbed.omf.importer import BrokerLease, import_leases

    def book(body: Any) -> None:
        from sfa_omf.errors import BadArgs

        raise BadArgs(f"valid_from: {body['valid_from']!r} is not a time")

    leases = [BrokerLease("l1", "l1", "soon", "later", {"name": "alice"}, ("urn:publicid:IDN+nitos+node+node1",))]
    report = import_leases(leases, book, lambda body: False)
    assert report.booked == [] and report.refused == [("l1", "valid_from: 'soon' is not a time")]
