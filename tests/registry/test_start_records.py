"""What every start records (server/app.py start_registry): the GIDs the authority issued (Records.import_authority)
and the inventory's nodes (record_nodes). Run by every start of every worker, they read only what is not recorded
yet: a GID file named by an HRN already recorded is not opened."""

from __future__ import annotations

from pathlib import Path

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.nodes import record_nodes
from sfa_omf.registry.records import Records
from sfa_omf.trust.gid import load_gid_chain


def test_a_start_opens_only_the_gid_files_not_recorded_yet(tmp_path: Path) -> None:
    init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    authority = LocalAuthority.load(str(tmp_path / "tb"), "tb")
    database = Database(sqlite_url(str(tmp_path / "start.sqlite")))
    database.upgrade()
    try:
        records = Records(database)
        assert records.import_authority(authority) >= 2  # the demo users (and slice): the first start records them
        assert {"tb.alice", "tb.bob"} <= records.recorded_hrns("user")

        # A recorded user's file is no longer opened: what it holds does not matter to the next start.
        (tmp_path / "tb" / "gids" / "tb.alice.gid").write_text("not a GID: a start that opened it would fail\n")
        chain, _ = authority.issue_gid("tb.carol", "user")  # issued since the last start: recorded by the next
        assert records.import_authority(authority) == 1
        carol = records.get("tb.carol")
        assert carol is not None and load_gid_chain(carol.gid)[0].urn == chain[0].urn
        assert records.import_authority(authority) == 0

        # A slice's researchers given to the import (sfa-omf init's) are still merged into its record.
        (slice_hrn,) = records.recorded_hrns("slice")
        assert records.import_authority(authority, {slice_hrn: ["tb.carol"]}) == 1
        recorded_slice = records.get(slice_hrn)
        assert recorded_slice is not None and "tb.carol" in recorded_slice.researchers
    finally:
        database.dispose()


def test_record_nodes_reads_the_recorded_node_names_only(tmp_path: Path) -> None:
    init_directory(str(tmp_path / "tb"), "tb", ())
    authority = LocalAuthority.load(str(tmp_path / "tb"), "tb")
    database = Database(sqlite_url(str(tmp_path / "start.sqlite")))
    database.upgrade()
    try:
        records = Records(database)
        inventory = Inventory(database)
        inventory.add_node(NodeSpec("urn:publicid:IDN+tb+node+n1", "n1"))
        first = record_nodes(authority, records, inventory.list_nodes())
        assert not first.failed and records.recorded_hrns("node") == {"tb.n1"}
        inventory.add_node(NodeSpec("urn:publicid:IDN+tb+node+n2", "n2"))
        record_nodes(authority, records, inventory.list_nodes())
        assert records.recorded_hrns("node") == {"tb.n1", "tb.n2"}
    finally:
        database.dispose()
