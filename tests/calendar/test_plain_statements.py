"""Statements run on the driver's cursor (calendar/plain_statements.py, issue 15): the same rows as SQLAlchemy
gives, booleans converted, statements that need SQLAlchemy left to it, driver errors raised as SQLAlchemy's classes,
a lost connection replaced — on SQLite and PostgreSQL unless said otherwise."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import Boolean, bindparam, column, create_engine, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.exc import IntegrityError

from sfa_omf.calendar import booking, generation, inventory, queries, slices
from sfa_omf.calendar.booking import BookingConflict, _lease_query
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Node, Pool, Slice
from sfa_omf.calendar.plain_statements import MAX_LISTED, PlainStatement, execute_plain, listed, listed_values
from sfa_omf.calendar.queries import held_windows, table_of, to_s
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn

_NODES = PlainStatement(
    select(Node.component_id, Node.exclusive, Node.grain_s)
    .where(Node.component_id.in_(listed("names", 2)))
    .order_by(Node.component_id)
)


def _by_sqlalchemy(database: Database, statement: PlainStatement[object], parameters: dict[str, object]) -> list:
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(statement.statement, parameters)]  # type: ignore[call-overload]


def test_a_plain_statement_answers_what_sqlalchemy_answers_with_booleans_as_booleans(calendar: Calendar) -> None:
    parameters = listed_values("names", [node_urn("n1"), node_urn("n3")])
    assert _NODES.compiled_for(calendar.database.engine.dialect) is not None, "this statement must take the plain path"
    rows = calendar.database.fetch_all(_NODES, parameters)
    assert rows == _by_sqlalchemy(calendar.database, _NODES, parameters)
    assert [row[0] for row in rows] == [node_urn("n1"), node_urn("n3")]
    assert all(row[1] is True for row in rows), "SQLite's 1 is answered as True, as SQLAlchemy answers it"


def test_a_statement_that_needs_sqlalchemy_is_run_by_it(calendar: Calendar) -> None:
    expanding = PlainStatement(
        select(Node.component_id).where(Node.component_id.in_(bindparam("names", expanding=True)))
    )
    timed = PlainStatement(select(Node.component_id, func.now()).where(Node.component_id == bindparam("name")))
    dialect = calendar.database.engine.dialect
    assert expanding.compiled_for(dialect) is None
    assert timed.compiled_for(dialect) is None, "a DateTime column needs SQLAlchemy's conversion"
    names = [node_urn("n2"), node_urn("n1")]
    assert sorted(row[0] for row in calendar.database.fetch_all(expanding, {"names": names})) == sorted(names)
    ((name, now),) = calendar.database.fetch_all(timed, {"name": node_urn("n1")})
    assert name == node_urn("n1") and isinstance(now, datetime), "converted by SQLAlchemy (SQLite answers text)"


def test_whether_a_statement_answers_rows_is_known_from_the_statement(calendar: Calendar) -> None:
    """A SELECT and a RETURNING answer rows, an UPDATE without RETURNING none (the driver's cursor is not asked: it
    costs psycopg a column object per column); a text statement, whose columns are unknown, is asked of the cursor."""
    nodes = table_of(Node)
    where = nodes.c.component_id == bindparam("name")
    returning = PlainStatement(update(nodes).where(where).values(grain_s=bindparam("grain")).returning(nodes.c.grain_s))
    silent = PlainStatement(update(nodes).where(where).values(grain_s=bindparam("grain")))
    textual = PlainStatement(text("SELECT 7"))
    # No RETURNING asked: SQLAlchemy adds the primary key's on PostgreSQL (none on SQLite), and it is answered.
    new_pool = PlainStatement(insert(table_of(Pool)).values(name=bindparam("name"), federated=True, description=""))
    dialect = calendar.database.engine.dialect
    kinds = [statement.compiled_for(dialect) for statement in (_NODES, returning, silent, textual, new_pool)]
    implicit = not calendar.database.is_sqlite
    assert [None if kind is None else kind.returns_rows for kind in kinds] == [True, True, False, None, implicit]
    with calendar.database.write_connection() as connection:
        answered = execute_plain(connection, new_pool, {"name": "implicit"})
    assert len(answered) == (1 if implicit else 0) and all(isinstance(row[0], int) for row in answered)
    with calendar.database.write_connection() as connection:
        assert execute_plain(connection, returning, {"name": node_urn("n1"), "grain": 900}) == [(900,)]
        assert execute_plain(connection, silent, {"name": node_urn("n1"), "grain": 600}) == []
    assert calendar.database.fetch_all(textual) == [(7,)]
    assert calendar.database.fetch_all(
        PlainStatement(select(nodes.c.grain_s).where(where)), {"name": node_urn("n1")}
    ) == [(600,)]


def test_json_is_encoded_and_decoded_as_sqlalchemy_does(calendar: Calendar) -> None:
    nodes = table_of(Node)
    write = PlainStatement(
        update(nodes).where(nodes.c.component_id == bindparam("name")).values(properties=bindparam("written"))
    )
    read = PlainStatement(select(Node.properties, Node.disk_images).where(Node.component_id == bindparam("name")))
    dialect = calendar.database.engine.dialect
    assert write.compiled_for(dialect) is not None and read.compiled_for(dialect) is not None
    document = {"radio": "ath9k", "channels": [1, 6, 11], "note": "été"}
    with calendar.database.write_connection() as connection:
        execute_plain(connection, write, {"name": node_urn("n1"), "written": document})
    ((properties, images),) = calendar.database.fetch_all(read, {"name": node_urn("n1")})
    assert (properties, images) == (document, [])
    assert calendar.inventory.get_node(node_urn("n1")).properties == document, "the ORM reads what was written"


def test_a_missing_parameter_is_refused_before_the_database_is_asked(calendar: Calendar) -> None:
    with pytest.raises(ValueError, match="names_1"):
        calendar.database.fetch_all(_NODES, {"names_0": node_urn("n1")})


def test_lists_are_bound_one_parameter_each_up_to_the_limit_then_expanded(calendar: Calendar) -> None:
    assert listed_values("urns", []) == {}
    assert listed_values("urns", ["a", "b"]) == {"urns_0": "a", "urns_1": "b"}
    long = [f"u{number}" for number in range(MAX_LISTED + 1)]
    assert listed_values("urns", long) == {"urns": long}
    assert isinstance(listed("urns", MAX_LISTED), list)
    assert listed("urns", MAX_LISTED + 1).expanding  # type: ignore[union-attr]


@pytest.mark.parametrize("named", [1, 2, MAX_LISTED + 3])
def test_a_slices_leases_read_by_its_slivers_are_its_leases_whatever_their_number(
    calendar: Calendar, named: int
) -> None:
    names = [f"m{number}" for number in range(named)]
    calendar.add_nodes(*names)
    booked = calendar.bookings.book(
        SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(name), at(1), at(2)) for name in names]
    ).leases
    urns = [sliver.urn for lease in booked for sliver in lease.slivers]
    assert len(urns) == named
    dialect = calendar.database.engine.dialect
    by_names = _lease_query(True, False, False, False, False, slivers_named=min(named, MAX_LISTED + 1))
    assert (by_names.compiled_for(dialect) is not None) == (named <= MAX_LISTED), "plain up to MAX_LISTED names"
    assert calendar.bookings.leases_holding_slivers(urns) == calendar.bookings.leases(slice_urn=SLICE)
    assert calendar.bookings.slices_of_slivers(urns) == {SLICE}
    assert calendar.bookings.leases_holding_slivers(["urn:publicid:IDN+testbed+sliver+none"]) == []
    assert calendar.bookings.leases_holding_slivers([]) == [], "no sliver named: none of any slice's leases"
    assert calendar.bookings.slices_of_slivers([]) == set()


def test_a_driver_error_is_sqlalchemys_and_the_unit_of_work_writes_nothing(calendar: Calendar) -> None:
    duplicate = PlainStatement(
        insert(table_of(Slice)).values(urn=bindparam("urn"), expires_s=bindparam("expires_s"), shut_down=False)
    )
    with calendar.database.write_connection() as connection:
        execute_plain(connection, duplicate, {"urn": "urn:publicid:IDN+testbed+slice+plain", "expires_s": 1})
    with pytest.raises(IntegrityError), calendar.database.write_connection() as connection:
        execute_plain(connection, duplicate, {"urn": "urn:publicid:IDN+testbed+slice+second", "expires_s": 1})
        execute_plain(connection, duplicate, {"urn": "urn:publicid:IDN+testbed+slice+plain", "expires_s": 1})
    found = calendar.database.fetch_all(
        PlainStatement(select(Slice.urn).where(Slice.urn.like(bindparam("pattern"))).order_by(Slice.urn)),
        {"pattern": "%+slice+%"},
    )
    assert [row[0] for row in found] == ["urn:publicid:IDN+testbed+slice+plain"], "the failed unit wrote nothing"


def test_a_statement_the_database_refuses_is_a_database_error_naming_it(calendar: Calendar) -> None:
    broken = PlainStatement(select(column("no_such_column", Boolean)).select_from(table_of(Slice)))
    with pytest.raises(GeniError) as refused:
        calendar.database.fetch_all(broken)
    assert refused.value.reason == Reason.DATABASE
    assert "no_such_column" in str(refused.value)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_connection_the_server_dropped_is_replaced(calendar: Calendar) -> None:
    """PostgreSQL ends the session of the calendar's one pooled connection: the plain read after it fails at most
    once, with DBERROR, and the next one is answered on a new connection."""
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    expected = calendar.bookings.leases(slice_urn=SLICE)
    calendar.database.engine.dispose()  # the pool is emptied: the next read opens the one connection ended below
    ((victim,),) = calendar.database.fetch_all(PlainStatement(select(func.pg_backend_pid())))
    admin = create_engine(calendar.database.url)
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
    finally:
        admin.dispose()
    answers = []
    for _ in range(2):
        try:
            answers.append(calendar.bookings.leases(slice_urn=SLICE))
        except GeniError as exc:
            assert exc.reason == Reason.DATABASE
    assert answers and answers[-1] == expected


def test_the_hot_statements_of_the_slice_calls_run_plain_on_both_databases() -> None:
    """Compiled without a database: each must take the driver's path on SQLite and PostgreSQL (a column of another
    type or an expanding list would quietly send it back through SQLAlchemy)."""
    both = (True, False)
    statements = [value for value in vars(booking).values() if isinstance(value, PlainStatement)]
    statements += [booking._renewal_statement(extending, bumping) for extending in both for bumping in both]
    statements += [booking._lease_query(True, True, False, False, False, with_nodes=nodes) for nodes in both]
    statements += [booking._lease_query(True, False, False, False, False, slivers_named=1, renewal_checks=True)]
    statements += [booking._slices_of_slivers(3), booking._nodes_for_booking(2)]
    statements += [queries._held_query(True, nodes, excluding) for nodes in (0, 3) for excluding in both]
    statements += [*queries._ADVISORY_LOCKS, *queries._ADVISORY_LOCKS_READING_EMAIL]
    statements += [
        inventory._node_query(3, False, False),
        inventory._node_query(0, True, True),
        slices._SLICE_WITH_USERS,
        booking._SLICE_VIEW,
    ]
    assert len(statements) >= 26
    for dialect in (pysqlite.dialect(), psycopg.dialect()):
        statements_of_dialect = [*statements, generation._bump_statement(dialect.name)]
        if dialect.name == "postgresql":  # (statements of PostgreSQL's alone)
            statements_of_dialect += [booking._renewal_alone(extending) for extending in both]
            statements_of_dialect += [booking._cancel_allocated_holding(count) for count in (1, 3)]
            lease_columns = ("id", "slice_id", "owner_urn", "start_s", "end_s", "state", "client_id")
            sliver_columns = ("urn", "lease_id", "node_id", "start_s", "end_s", "holds_node", "allocation_state")
            sliver_columns += ("operational_state", "expires_s", "client_id", "disk_image")  # as _insert writes them
            statements_of_dialect += [booking._lease_and_sliver(lease_columns, sliver_columns, view) for view in both]
        refused = [statement for statement in statements_of_dialect if statement.compiled_for(dialect) is None]
        assert refused == [], f"{dialect.name}: not plain"


@pytest.mark.parametrize("count", [MAX_LISTED, MAX_LISTED + 1])
def test_node_lists_at_the_limit_of_one_parameter_each_and_past_it(calendar: Calendar, count: int) -> None:
    """Up to MAX_LISTED ids the statements are plain, past it SQLAlchemy expands the list: the same answers, and a
    booking of the nodes locks them and refuses a second one."""
    names = [f"b{number:02d}" for number in range(count)]
    calendar.add_nodes(*names)
    urns = {node_urn(name) for name in names}
    assert [node.component_id for node in calendar.inventory.list_nodes(component_ids=urns)] == sorted(urns)
    assert calendar.inventory.list_nodes(component_ids=urns | {node_urn("none")}) == calendar.inventory.list_nodes(
        component_ids=urns
    )
    assert calendar.inventory.list_nodes(component_ids=set()) == []
    requests = [BookingRequest(node_urn(name), at(1), at(2)) for name in names]
    calendar.bookings.book(SLICE, SLICE_EXPIRES, requests)
    with pytest.raises(BookingConflict):
        calendar.bookings.book("urn:publicid:IDN+testbed+slice+other", SLICE_EXPIRES, requests)
    with calendar.database.read() as session:
        ids = set(session.scalars(select(Node.id).where(Node.component_id.in_(urns))))
        every = held_windows(session, 0)
        named = held_windows(session, 0, None, ids)
        excluding = held_windows(session, 0, to_s(at(10)), ids, exclude_lease="none")
        nothing = held_windows(session, 0, None, set())
    assert dict(named) == dict(excluding) == {node_id: every[node_id] for node_id in ids}
    assert len(named) == count and all(windows == [(to_s(at(1)), to_s(at(2)))] for windows in named.values())
    assert dict(nothing) == {}
