"""The OMF inventory's account of a lease whose booker (per user) or slice (per slice) the registry removed while the
lease runs: the login the lease ran under (the one the removal retired), never a login made up from the marked
owner "URN (removed TIME)" nor the login of whoever registered the name next. Through the aggregate's own Allocate
and Provision (type = omf), the operator's ``sfa-omf user|slice remove``, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, select

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.models import Lease, RetiredLogin, Slice
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.accounts import derived_login, lease_logins
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import Records
from sfa_omf.registry.removed_marks import removed_holder, removed_mark_parts
from sfa_omf.server.app import build_aggregate
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.testbed.omf.inventory import OmfInventory
from sfa_omf.testbed.omf.rest import omf_inventory
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import GidChain
from tests.calendar.conftest import fresh_database

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

ANN = "urn:publicid:IDN+lab+user+ann"
SLICE = "urn:publicid:IDN+lab+slice+demo"
N1 = "urn:publicid:IDN+lab+node+node1"
N2 = "urn:publicid:IDN+lab+node+node2"
GENI_V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}


@dataclass
class Lab:
    directory: Path
    aggregate: Aggregate
    authority: LocalAuthority
    admin: RegistryAdmin
    inventory: OmfInventory

    def ann(self) -> GidChain:
        """The chain of whoever holds the name lab.ann now (the registry rewrites it for a new holder)."""
        return self.authority.issued_chain("lab.ann")

    def book_now(self, chain: GidChain, node: str) -> None:
        """Allocate ``node`` for the current hour and Provision it, as the owner of ``chain`` in slice demo."""
        credential = self.authority.credential(chain, self.authority.issued_chain("lab.demo"))
        start = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=utcnow().minute % 30)
        window = (format_time(start), format_time(start + timedelta(hours=1)))
        request = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
            'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
            f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>'
            f'<node client_id="n" component_id="{node}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
        )
        api, context = ApiV3(self.aggregate), CallContext(chain, "127.0.0.1", "/")
        allocated = api(context, "Allocate", (SLICE, [credential], request, {}))
        assert allocated["code"]["geni_code"] == 0, allocated
        provisioned = api(context, "Provision", ([SLICE], [credential], GENI_V3))
        assert provisioned["code"]["geni_code"] == 0, provisioned

    def account_on(self, node_name: str) -> dict[str, Any]:
        """The account of the one lease on a node, as the testbed's controllers read it (GET /resources/nodes)."""
        answer = self.inventory.get("nodes", {"name": [node_name]})
        (lease,) = answer["resource_response"]["resource"]["leases"]
        assert lease["status"] == "active"
        account: dict[str, Any] = lease["account"]
        return account

    def account_names(self) -> list[str | None]:
        """The names GET /resources/accounts lists."""
        return [entry["name"] for entry in self.inventory.get("accounts", {})["resource_response"]["resources"]]


def make_lab(kind: str, policy: str, tmp_path: Path) -> Lab:
    directory = tmp_path / "lab"
    calendar = fresh_database(kind, tmp_path)
    calendar_url = calendar.engine.url.render_as_string(hide_password=False)
    calendar.dispose()
    init_directory(str(directory), "lab", ("ann",))
    settings = replace(
        read_config(str(directory / "sfa-omf.conf")),
        aggregate_type="omf",
        database_url=calendar_url,
        account_policy=policy,
    )
    aggregate = build_aggregate(settings)
    for urn, name in ((N1, "node1"), (N2, "node2")):
        aggregate.inventory.add_node(NodeSpec(urn, name))
    authority = LocalAuthority.load(str(directory), "lab")
    records = Records(aggregate.database)
    records.import_authority(authority)
    records.update("lab.demo", researchers=["lab.ann"])
    return Lab(
        directory,
        aggregate,
        authority,
        RegistryAdmin(authority, records, settings),
        omf_inventory(aggregate, "https://broker"),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def per_user(kind: str, tmp_path: Path) -> Iterator[Lab]:
    lab = make_lab(kind, "per-user", tmp_path)
    yield lab
    lab.aggregate.database.dispose()


@pytest.fixture
def per_slice(kind: str, tmp_path: Path) -> Iterator[Lab]:
    lab = make_lab(kind, "per-slice", tmp_path)
    yield lab
    lab.aggregate.database.dispose()


def test_a_removed_users_running_lease_shows_the_login_it_ran_under(per_user: Lab) -> None:
    """The reproduction: ann books node1 (her login is mapped and used), the registry removes her while the lease
    runs. Before the fix the lease's account became derived_login("URN (removed TIME)"), a login that never
    existed (ann__removed_2026_..._1a2b3c): the controllers refused her account in her own running lease."""
    lab = per_user
    lab.book_now(lab.ann(), N1)
    ran_under = lab.aggregate.accounts.login_for(ANN, SLICE)
    assert lab.account_on("node1") == {"uuid": lab.account_on("node1")["uuid"], "name": ran_under, "urn": SLICE}

    lab.admin.remove("ann", "user")

    account = lab.account_on("node1")
    assert account["name"] == ran_under, f"{account['name']!r} is not the login the lease ran under"
    assert account["removed"] is True and account["urn"] == SLICE
    assert lab.account_names() == [ran_under]

    # Someone else is registered as ann and books node2: each lease keeps its own login.
    lab.admin.add_user("ann")
    lab.admin.add_researcher("demo", "ann")
    lab.book_now(lab.ann(), N2)
    next_holders = lab.aggregate.accounts.login_for(ANN, SLICE)
    assert next_holders == derived_login(ANN, holder=1) != ran_under
    assert lab.account_on("node1")["name"] == ran_under, "the removed ann's lease shows the next holder's login"
    assert lab.account_on("node2") == {"uuid": lab.account_on("node2")["uuid"], "name": next_holders, "urn": SLICE}
    assert sorted(name or "" for name in lab.account_names()) == sorted([ran_under, next_holders])


def test_a_removed_slices_running_lease_shows_the_slices_login(per_slice: Lab) -> None:
    """Per slice: the registry removes slice demo while its lease runs (the slice becomes "URN (removed TIME)");
    the lease keeps the slice's login, not one derived from the marked slice, and a slice registered again under
    the name gets a login of its own."""
    lab = per_slice
    lab.book_now(lab.ann(), N1)
    ran_under = lab.aggregate.accounts.login_for(ANN, SLICE)
    assert ran_under == derived_login(SLICE)

    lab.admin.remove("demo", "slice")

    account = lab.account_on("node1")
    assert account["name"] == ran_under, f"{account['name']!r} is not the login the lease ran under"
    assert account["removed"] is True and account["urn"] != SLICE  # the removed slice's, not the name's

    lab.admin.create_slice("demo", ["ann"])
    lab.book_now(lab.ann(), N2)
    assert lab.account_on("node1")["name"] == ran_under
    assert lab.account_on("node2")["name"] == derived_login(SLICE, holder=1) != ran_under


def test_a_removed_lease_owner_whose_login_is_not_on_record_says_so(per_user: Lab) -> None:
    """A removed owner whose retired login the database does not hold (a calendar from before retired logins were
    kept): the account says it was removed and names no login, rather than one made up from the marked text."""
    lab = per_user
    lab.book_now(lab.ann(), N1)
    lab.admin.remove("ann", "user")
    with lab.aggregate.database.write() as session:
        session.execute(delete(RetiredLogin).where(RetiredLogin.urn == ANN))

    account = lab.account_on("node1")
    assert account["name"] is None and account["removed"] is True


def test_the_mark_reads_back_as_the_urn_and_time_it_was_made_of() -> None:
    """removed_mark_parts undoes records.removed_holder (what the removal writes), also for a URN cut to fit."""
    removed = utcnow().replace(microsecond=0)
    assert removed_mark_parts(removed_holder(ANN, removed)) == (ANN, removed)
    long_urn = "urn:publicid:IDN+lab+user+" + "a" * 280
    cut, when = removed_mark_parts(removed_holder(long_urn, removed)) or ("", None)
    assert long_urn.startswith(cut) and len(cut) < len(long_urn) and when == removed
    assert removed_mark_parts(ANN) is None
    # Migration 0024's marks of what earlier removals left: the login is the newest retired by then.
    assert removed_mark_parts(f"{ANN} (removed before {format_time(removed)})") == (ANN, removed)


def operator_lease(lab: Lab, node_name: str, login: str) -> None:
    """An operator's lease of slice demo on ``node_name`` for the current hour, under the account ``login``
    (POST /resources/leases: booked by the slice itself)."""
    start = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=utcnow().minute % 30)
    lab.inventory.book_lease(
        {
            "valid_from": format_time(start),
            "valid_until": format_time(start + timedelta(hours=1)),
            "account_attributes": {"urn": SLICE, "name": login},
            "components": [{"name": node_name}],
        }
    )


def test_a_removed_slices_operator_lease_keeps_its_login_per_user(per_user: Lab) -> None:
    """Per user, an operator's lease is its slice's own (booked by the slice: its account is the slice's). The
    registry removes the slice while it runs, the name is registered again and the operator books a lease of the new
    slice under another account: the old lease still shows the login it ran under. Before the fix only the slice
    was renamed: the lease's booker stayed the plain slice URN, now the new slice's, and showed its account."""
    lab = per_user
    operator_lease(lab, "node1", "opsold")
    assert lab.account_on("node1")["name"] == "opsold"

    lab.admin.remove("demo", "slice")
    lab.admin.create_slice("demo", ["ann"])
    operator_lease(lab, "node2", "opsnew")

    account = lab.account_on("node1")
    assert account["name"] == "opsold", f"{account['name']!r}: the removed slice's lease shows another account"
    assert account["removed"] is True
    assert lab.account_on("node2")["name"] == "opsnew" and "removed" not in lab.account_on("node2")


def test_a_slice_left_after_removal_takes_its_operator_leases_with_it(per_user: Lab) -> None:
    """A slice the aggregate made under the removed slice's URN after the removal (here an operator's lease) is
    renamed when the name is registered again (records.py _rename_slice_left_after_removal): its operator lease's
    booker, the slice itself, is renamed with it, not left naming the new slice."""
    lab = per_user
    operator_lease(lab, "node1", "opsold")
    lab.admin.remove("demo", "slice")
    operator_lease(lab, "node2", "opsmid")  # made under the plain URN again, nobody holding the name

    lab.admin.create_slice("demo", ["ann"])

    with lab.aggregate.database.read() as session:
        bookers = session.execute(select(Slice.urn, Lease.owner_urn).join(Slice, Lease.slice_id == Slice.id)).all()
    assert len(bookers) == 2
    assert all(owner == slice_urn != SLICE for slice_urn, owner in bookers), bookers


def sqlite_plans(lab: Lab, read: Any) -> list[str]:
    """The SQLite query plan lines (EXPLAIN QUERY PLAN) of every SELECT that ``read()`` runs."""
    engine = lab.aggregate.database.engine
    statements: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", note)
    try:
        read()
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert statements
    with engine.connect() as connection:
        return [
            str(row[3])
            for statement, parameters in statements
            for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        ]


#: The tables that grow with everyone the testbed ever registered, mapped or removed (registry_record rows hold a
#: GID of kilobytes each): an answer about some leases reads them by index, never whole.
EVERYONE_TABLES = ("registry_record", "account_mapping", "retired_login")


def scanning(plans: list[str]) -> list[str]:
    """The plan lines that read one of EVERYONE_TABLES whole."""
    return [line for line in plans if any(line.startswith(f"SCAN {table}") for table in EVERYONE_TABLES)]


def test_the_inventory_reads_logins_by_index_not_whole_tables(tmp_path: Path) -> None:
    """Every GET of nodes, leases and accounts read the logins of every lease key there is: every account mapping,
    and every retired login with an EXISTS over registry_record.urn (no index: a scan of the registry per retired
    login, 20 s with 1 000 retired logins and 10 000 records). Now it reads the keys of the leases it shows, through
    indexes: SQLite's plan of every SELECT searches those tables, none scans them. (SQLite only: PostgreSQL's planner
    scans small tables whatever the indexes.)"""
    lab = make_lab("sqlite", "per-user", tmp_path)
    try:
        lab.book_now(lab.ann(), N1)
        ran_under = lab.aggregate.accounts.login_for(ANN, SLICE)
        lab.admin.remove("ann", "user")
        lab.admin.add_user("ann")  # ann's URN: retired, registered again, not mapped yet
        with lab.aggregate.database.read() as session:
            (marked,) = session.scalars(select(Lease.owner_urn))

        plans = sqlite_plans(lab, lambda: [lab.inventory.get(what, {}) for what in ("nodes", "leases", "accounts")])
        assert scanning(plans) == []
        assert lab.account_on("node1")["name"] == ran_under

        # A key registered again (ann's plain URN) is looked up in registry_record too: by its HRN's index.
        logins: list[Any] = []
        plans = sqlite_plans(lab, lambda: logins.append(lease_logins(lab.aggregate.database, [ANN, marked])))
        assert scanning(plans) == []
        assert any(line.startswith("SEARCH registry_record USING INDEX") for line in plans), plans
        assert logins[0].login_of(marked) == ran_under
        assert logins[0].login_of(ANN) == derived_login(ANN, holder=1)  # registered again: the next holder's
    finally:
        lab.aggregate.database.dispose()
