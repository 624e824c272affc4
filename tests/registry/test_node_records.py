"""The testbed's nodes in the registry (the founding scenario: an experimenter browses the nodes with sfi.py): every
node of the inventory named under the local authority is a record of type node with its GID, kept in step by
``sfa-omf node add|remove`` and by the registry's start; List and Resolve answer for them over real TLS, with the
fields ``sfi.py show`` prints."""

from __future__ import annotations

import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Records
from sfa_omf.server.app import start_registry
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import load_gid_chain
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.tls_harness import proxy


def run(capsys: pytest.CaptureFixture[str], directory: Path, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--config", str(directory / "sfa-omf.conf")])
    return code, capsys.readouterr().out


def test_nodes_are_registry_records_listed_and_shown(
    running_reactor: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "omf"
    report = init_directory(str(directory), "omf.nicta", ("alice",))
    settings = read_config(str(directory / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    database.upgrade()
    register_demo(report, database)
    for number in (1, 2):
        code, out = run(capsys, directory, "node", "add", f"urn:publicid:IDN+omf:nicta+node+node{number}")
        assert code == 0 and "1 node record(s) added to the registry of omf.nicta" in out
    # A node added another way (an import, a script) is recorded when the registry starts; a foreign one is not.
    inventory = Inventory(database)
    inventory.add_node(NodeSpec("urn:publicid:IDN+omf:nicta+node+node3", "node3"))
    inventory.add_node(NodeSpec("urn:publicid:IDN+elsewhere+node+x", "x"))
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/"
        sfi = Path(report.sfi_dirs["alice"])
        client = proxy(url, str(sfi / "omf.nicta.alice.user.gid"), str(sfi / "omf.nicta.alice.pkey"))
        user_cred = (sfi / "omf.nicta.alice.user.cred").read_text()
        listed = client.List("omf.nicta", [user_cred], {})
        nodes = sorted(record["hrn"] for record in listed if record["type"] == "node")
        assert nodes == ["omf.nicta.node1", "omf.nicta.node2", "omf.nicta.node3"]
        (node2,) = client.Resolve("omf.nicta.node2", [user_cred], {"details": True})
        assert (node2["hrn"], node2["type"], node2["authority"], node2["reg-urn"]) == (
            "omf.nicta.node2",
            "node",
            "omf.nicta",
            "urn:publicid:IDN+omf:nicta+node+node2",
        )
        assert {"date_created", "last_updated", "peer_authority"} <= set(node2)
        chain = load_gid_chain(node2["gid"])
        assert chain[0].urn == "urn:publicid:IDN+omf:nicta+node+node2" and chain[0].uuid
        roots = load_trusted_roots(str(directory / "trusted_roots"))
        CredentialVerifier(roots).verify_caller(chain, utcnow())  # the node GID chains to the authority's root

        # node remove takes the record away (and its GID's record, so no restart brings it back).
        assert run(capsys, directory, "node", "remove", "urn:publicid:IDN+omf:nicta+node+node1")[0] == 0
        with pytest.raises(xmlrpc.client.Fault) as gone:
            client.Resolve("omf.nicta.node1", [user_cred], {})
        assert gone.value.faultCode == 12 and "no record omf.nicta.node1" in gone.value.faultString
        assert Records(database).get("omf.nicta.node1") is None
        authority = LocalAuthority.load(str(directory), "omf.nicta")
        assert not Path(authority.issued_gid_path("omf.nicta.node1")).exists()
        assert Records(database).get("elsewhere.x") is None, "a node of another authority is not ours to record"
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
