"""What ``Bookings.book`` answers when there is nothing to book, or when the database refuses the slivers' rows for a
reason other than a racer's overlap: a GENI error, never a crash, and nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sfa_omf.calendar.database import OVERLAP_CONSTRAINT, RETRY_ATTEMPTS, Database
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn


def test_a_request_of_no_node_is_bad_args(calendar: Calendar) -> None:
    with pytest.raises(GeniError) as refused:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [])
    assert refused.value.reason is Reason.BAD_ARGS and "books no node" in refused.value.message
    assert calendar.bookings.leases(slice_urn=SLICE) == []


def _node_id(database: Database, name: str) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT id FROM node WHERE component_id = :urn"), {"urn": node_urn(name)}
            ).scalar_one()
        )


def _refuse_slivers_of(database: Database, name: str) -> None:
    """A stand-in: a constraint of the test's own that refuses any sliver of node ``name``. The schema's own
    constraints other than the no-overlap one (unique sliver URNs, foreign keys) cannot be broken through ``book``,
    which checks first; this one makes the database refuse the insert for real, as one of those would."""
    node_id = _node_id(database, name)
    with database.engine.begin() as connection:
        if database.engine.dialect.name == "postgresql":
            connection.execute(text(f"ALTER TABLE sliver ADD CONSTRAINT stand_in_refused CHECK (node_id <> {node_id})"))
        else:
            connection.execute(
                text(
                    f"CREATE TRIGGER stand_in_refused BEFORE INSERT ON sliver WHEN NEW.node_id = {node_id} "
                    "BEGIN SELECT RAISE(ABORT, 'stand_in_refused'); END"
                )
            )


def test_a_refusal_that_is_no_overlap_is_a_database_error_at_once(
    calendar: Calendar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not retried as a racer's overlap would be, nor a crash: DATABASE with the database's words, nothing booked
    (n1's sliver, written before n2's was refused, is rolled back with it)."""
    _refuse_slivers_of(calendar.database, "n2")
    requests = [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))]
    attempts: list[object] = []
    book_once = calendar.bookings._book_once

    def counted(*args: Any, **kwargs: Any) -> Any:  # the real attempt, counted (an overlap would be tried again)
        attempts.append(args)
        return book_once(*args, **kwargs)

    monkeypatch.setattr(calendar.bookings, "_book_once", counted)
    with pytest.raises(GeniError) as refused:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, requests)
    assert len(attempts) == 1
    assert refused.value.reason is Reason.DATABASE
    assert "the calendar refused the booking" in refused.value.message and "stand_in_refused" in refused.value.message
    assert calendar.bookings.leases(slice_urn=SLICE) == []
    calendar.bookings.book(SLICE, SLICE_EXPIRES, requests[:1])  # the other node is bookable still
    assert len(calendar.bookings.leases(slice_urn=SLICE)) == 1


def test_an_overlap_refused_at_every_attempt_is_a_database_error_in_the_end(tmp_path: Path) -> None:
    """PostgreSQL: a racer's overlap is retried, RETRY_ATTEMPTS times in all, then answered DATABASE (not looped on, nor
    a crash). A stand-in trigger refuses every sliver as the exclusion constraint refuses an overlap (SQLSTATE 23P01):
    real racers cannot be made to win every attempt."""
    calendar = Calendar(fresh_database("postgresql", tmp_path), Policy())  # SQLite refuses no overlap at the insert
    try:
        calendar.add_nodes("n1")
        with calendar.database.engine.begin() as connection:
            connection.execute(text("CREATE SEQUENCE stand_in_attempts"))
            connection.execute(
                text(
                    "CREATE FUNCTION stand_in_overlap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "PERFORM nextval('stand_in_attempts'); "
                    f"RAISE EXCEPTION 'conflicting key value violates exclusion constraint \"{OVERLAP_CONSTRAINT}\"' "
                    "USING ERRCODE = 'exclusion_violation'; END $$"
                )
            )
            trigger = "CREATE TRIGGER stand_in_overlap BEFORE INSERT ON sliver FOR EACH ROW EXECUTE FUNCTION {}()"
            connection.execute(text(trigger.format("stand_in_overlap")))
        with pytest.raises(GeniError) as refused:
            calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
        assert refused.value.reason is Reason.DATABASE and OVERLAP_CONSTRAINT in refused.value.message
        with calendar.database.engine.connect() as connection:
            # Each attempt's nextval survives its rollback (sequences are not transactional).
            attempts = connection.execute(text("SELECT last_value FROM stand_in_attempts")).scalar_one()
        assert attempts == RETRY_ATTEMPTS
        assert calendar.bookings.leases(slice_urn=SLICE) == []
    finally:
        calendar.database.dispose()
