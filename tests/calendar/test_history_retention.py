"""The calendar's history retention ([sfa_omf] history_days, calendar/retention.py): finished leases (cancelled,
expired, ended) whose end is older than history_days go with every row naming them, then slices with no lease left
that expired as long ago; active leases, recent ones, leases whose testbed work is not over and slices still in use
stay. On SQLite and PostgreSQL; the leader's pass and ``sfa-omf db prune [--dry-run]``.

A hunter's Allocate/Delete loop left one cancelled lease, its slivers and a slice row per cycle, for ever. Here the
leases are booked through the calendar as usual, then aged (their windows moved back) to be as old as wanted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, update

from sfa_omf.calendar.agent_models import AgentReport
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.models import (
    Lease,
    LeaseInstance,
    LeaseRevision,
    OarJob,
    OmfSlot,
    ProvisionHoldRow,
    Slice,
    SliceUser,
    Sliver,
    WithdrawalDue,
)
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.retention import HistoryRetention
from sfa_omf.calendar.slices import Slices
from sfa_omf.cli import main
from sfa_omf.times import utcnow
from tests.calendar.conftest import SLICE_EXPIRES, Calendar, at, node_urn

DAY_S = 86400
HISTORY_DAYS = 365
OLD_DAYS = 400  # aged past history_days
RECENT_DAYS = 300  # aged, but within history_days
ALICE = "urn:publicid:IDN+testbed+user+alice"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZQbv4zJNwBFAFSBAJ9dN1oS7IfLsNKSOlUzHZDZ1MU alice@laptop"
DEPENDENT = (Sliver, AgentReport, LeaseInstance, OarJob, OmfSlot, ProvisionHoldRow, LeaseRevision)


def slice_urn(name: str) -> str:
    return f"urn:publicid:IDN+testbed+slice+{name}"


def book(calendar: Calendar, name: str, node: str, hours: float = 1) -> str:
    """A lease of one node for slice ``name`` (with alice's key), starting in ``hours``; its id."""
    result = calendar.bookings.book(
        slice_urn(name), SLICE_EXPIRES, [BookingRequest(node_urn(node), at(hours), at(hours + 1))], users={ALICE: [KEY]}
    )
    return result.leases[0].id


def age(database: Database, days: int, lease_ids: Sequence[str] = (), slices: Sequence[str] = ()) -> None:
    """Move these leases' windows (and slivers') and these slices' expiries ``days`` back: as if booked long ago."""
    shift = days * DAY_S
    with database.write_connection() as connection:
        if lease_ids:
            connection.execute(
                update(Lease)
                .where(Lease.id.in_(lease_ids))
                .values(start_s=Lease.start_s - shift, end_s=Lease.end_s - shift)
            )
            connection.execute(
                update(Sliver)
                .where(Sliver.lease_id.in_(lease_ids))
                .values(start_s=Sliver.start_s - shift, end_s=Sliver.end_s - shift, expires_s=Sliver.expires_s - shift)
            )
        if slices:
            urns = [slice_urn(name) for name in slices]
            connection.execute(update(Slice).where(Slice.urn.in_(urns)).values(expires_s=Slice.expires_s - shift))


def add_dependents(
    database: Database,
    lease_id: str,
    instance: str = "destroyed",
    slot: str = "ended",
    job: str = "deleted",
) -> None:
    """A row naming the lease in each table that does: an agent's report, a container, an OAR job, an OMF slot, a
    provision hold, a feed revision."""
    now_s = to_s(utcnow())
    with database.write_connection() as connection:
        node_id, sliver_urn = connection.execute(
            select(Sliver.node_id, Sliver.urn).where(Sliver.lease_id == lease_id)
        ).one()
        connection.execute(
            insert(AgentReport).values(lease_id=lease_id, node_id=node_id, state="ended", message="", updated_s=now_s)
        )
        connection.execute(
            insert(LeaseInstance).values(
                name=f"sfaomf-{lease_id}-0",
                lease_id=lease_id,
                sliver_urn=sliver_urn,
                node="n",
                position=0,
                image="",
                address=None,
                state=instance,
                error="",
                updated_s=now_s,
            )
        )
        connection.execute(
            insert(OarJob).values(lease_id=lease_id, job_id=7, owner="alice", state=job, message="", updated_s=now_s)
        )
        connection.execute(
            insert(OmfSlot).values(
                lease_id=lease_id, phase=slot, accounts={}, failures={}, message="", attempts=0, updated_s=now_s
            )
        )
        connection.execute(insert(ProvisionHoldRow).values(lease_id=lease_id, token="", held_until_s=now_s))
        connection.execute(insert(LeaseRevision).values(lease_id=lease_id, sequence=1, fingerprint="f", stamp_s=now_s))


def rows_of(database: Database, lease_id: str) -> dict[str, int]:
    """The lease's own row and every row naming it, counted per table."""
    counts = {}
    with database.read() as session:
        counts["lease"] = session.scalar(select(func.count()).select_from(Lease).where(Lease.id == lease_id)) or 0
        for model in DEPENDENT:
            column = model.__table__.c.lease_id
            counts[model.__tablename__] = session.scalar(select(func.count()).where(column == lease_id)) or 0
    return counts


def gone(database: Database, lease_id: str) -> bool:
    return not any(rows_of(database, lease_id).values())


def slice_rows(database: Database, name: str) -> tuple[int, int]:
    """(slice rows, slice user rows) of slice ``name``."""
    with database.read() as session:
        slice_id = session.scalar(select(Slice.id).where(Slice.urn == slice_urn(name)))
        if slice_id is None:
            return 0, 0
        users = session.scalar(select(func.count()).select_from(SliceUser).where(SliceUser.slice_id == slice_id))
        return 1, users or 0


def everything(database: Database) -> list[tuple[object, ...]]:
    """Every row of the tables the retention deletes from."""
    with database.read() as session:
        rows: list[tuple[object, ...]] = []
        for model in (Lease, Slice, SliceUser, *DEPENDENT):
            rows += [tuple(row) for row in session.execute(select(model.__table__)).all()]
        return sorted(rows, key=repr)


def generation(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


def retention(database: Database, days: int = HISTORY_DAYS, batch: int = 2) -> HistoryRetention:
    # A batch of 2: the tests' few leases still take several batches (each its own transaction).
    return HistoryRetention(database, days, clock=utcnow, batch=batch)


@pytest.fixture
def history(calendar: Calendar) -> dict[str, str]:
    """Leases of every kind, aged; their ids by what they are."""
    bookings = calendar.bookings
    leases = {
        "cancelled": book(calendar, "monitor", "n1", 1),
        "cancelled2": book(calendar, "monitor", "n1", 3),
        "expired": book(calendar, "monitor", "n2", 1),
        "ended": book(calendar, "old", "n3", 1),
        "recent": book(calendar, "recent", "n1", 5),
        "active": book(calendar, "live", "n2", 3),  # provisioned, its slot long over, not retired yet: active
        "container": book(calendar, "kept", "n1", 7),  # its container not destroyed yet
        "slot": book(calendar, "kept", "n2", 7),  # its OMF slot's end failed: keys still in the logins
        "job": book(calendar, "kept", "n3", 7),  # its OAR job being deleted
        "withdrawal": book(calendar, "keys", "n1", 9),  # its slice's keys still to be withdrawn
        "shutdown": book(calendar, "shut", "n2", 9),  # cancelled (history), its slice shut down (kept)
    }
    for name in ("cancelled", "cancelled2", "recent", "container", "slot", "job", "withdrawal", "shutdown"):
        bookings.cancel(leases[name])
    bookings.mark_provisioned(leases["ended"])
    bookings.mark_provisioned(leases["active"])
    calendar.now = at(3)  # the expired allocation's time to be provisioned is over; ended's slot is over
    assert [lease.id for lease in bookings.expire_unprovisioned()] == [leases["expired"]]
    calendar.now = at(2.5)
    assert [lease.id for lease in bookings.retire_ended()] == [leases["ended"]]
    leases["allocated"] = book(calendar, "live", "n3", 5)  # never swept: allocated all the same
    for name in ("cancelled", "expired", "ended", "container", "slot", "job", "withdrawal", "shutdown"):
        add_dependents(calendar.database, leases[name])
    add_dependents(calendar.database, leases["recent"])
    with calendar.database.write_connection() as connection:
        connection.execute(
            update(LeaseInstance).where(LeaseInstance.lease_id == leases["container"]).values(state="running")
        )
        connection.execute(update(OmfSlot).where(OmfSlot.lease_id == leases["slot"]).values(phase="end_failed"))
        connection.execute(update(OarJob).where(OarJob.lease_id == leases["job"]).values(state="deleting"))
        connection.execute(insert(WithdrawalDue).values(slice_urn=slice_urn("keys"), reason="disk full", since_s=0))
    Slices(calendar.database).set_shut_down(slice_urn("shut"), True)
    old = [lease_id for name, lease_id in leases.items() if name != "recent"]
    age(calendar.database, OLD_DAYS, old, ["monitor", "old", "live", "kept", "keys", "shut"])
    age(calendar.database, RECENT_DAYS, [leases["recent"]], ["recent"])
    return leases


def test_old_finished_leases_go_with_every_row_naming_them(calendar: Calendar, history: dict[str, str]) -> None:
    database = calendar.database
    assert all(rows_of(database, history["cancelled"]).values())  # a row in every table before
    before = generation(database)
    counts = retention(database).prune()
    for name in ("cancelled", "cancelled2", "expired", "ended", "shutdown"):
        assert gone(database, history[name]), name
    assert counts.rows["leases"] == 5
    assert counts.rows["slivers"] == 5
    for kind in ("agent_reports", "lease_instances", "oar_jobs", "omf_slots", "provision_holds", "lease_revisions"):
        assert counts.rows[kind] == 4, kind  # cancelled, expired, ended and shutdown had one each
    # No cached answer held these rows: the generation (every process's caches) is left as it was.
    assert generation(database) == before


def test_recent_active_and_unfinished_leases_stay(calendar: Calendar, history: dict[str, str]) -> None:
    database = calendar.database
    retention(database).prune()
    assert gone(database, history["cancelled"])  # the same pass deleted what is history
    for name in ("recent", "active", "allocated", "container", "slot", "job", "withdrawal"):
        rows = rows_of(database, history[name])
        assert rows["lease"] == 1 and rows["sliver"] == 1, (name, rows)
    assert all(rows_of(database, history["container"]).values())  # its rows too: the container is to be destroyed


def test_slices_go_once_no_lease_is_left_and_they_expired_long_ago(calendar: Calendar, history: dict[str, str]) -> None:
    database = calendar.database
    counts = retention(database).prune()
    assert slice_rows(database, "monitor") == (0, 0)  # every lease history, expired 400 days ago: gone, users too
    assert slice_rows(database, "old") == (0, 0)
    assert counts.rows["slices"] == 2 and counts.rows["slice_users"] == 2
    assert slice_rows(database, "live") == (1, 1)  # active leases
    assert slice_rows(database, "recent") == (1, 1)  # expired within history_days (and its lease stays)
    assert slice_rows(database, "kept") == (1, 1)  # leases whose testbed work is not over
    assert slice_rows(database, "keys") == (1, 1)  # keys still to be withdrawn
    assert slice_rows(database, "shut") == (1, 1)  # shut down: a later Allocate must still meet it


def test_a_slice_without_leases_within_retention_stays(calendar: Calendar) -> None:
    database = calendar.database
    lease_id = book(calendar, "young", "n1")
    calendar.bookings.cancel(lease_id)
    age(database, OLD_DAYS, [lease_id])  # the lease is history; the slice expires in 30 days
    counts = retention(database).prune()
    assert gone(database, lease_id)
    assert slice_rows(database, "young") == (1, 1)
    assert counts.rows["slices"] == 0


def test_the_pass_is_idempotent(calendar: Calendar, history: dict[str, str]) -> None:
    database = calendar.database
    first = retention(database).prune()
    assert first.total > 0
    kept = everything(database)
    second = retention(database).prune()
    assert second.total == 0, second.rows
    assert everything(database) == kept


def test_history_days_zero_keeps_everything(calendar: Calendar, history: dict[str, str]) -> None:
    database = calendar.database
    before = everything(database)
    assert retention(database).prune(dry_run=True).total > 0  # what 365 days would delete
    assert retention(database, days=0).prune().total == 0
    assert retention(database, days=0).prune(dry_run=True).total == 0
    assert everything(database) == before


def test_a_dry_run_counts_what_a_pass_deletes_and_deletes_nothing(calendar: Calendar, history: dict[str, str]) -> None:
    database = calendar.database
    before = everything(database)
    dry = retention(database).prune(dry_run=True)
    assert dry.total > 0
    assert everything(database) == before
    assert dry.rows == retention(database).prune().rows


def _config(tmp_path: Path, database: Database, history_days: int) -> str:
    path = tmp_path / "sfa-omf.conf"
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    url = database.engine.url.render_as_string(hide_password=False)
    path.write_text(
        f"[sfa]\ninterface_hrn = testbed\ndata_dir = {data_dir}\n\n"
        f"[sfa_omf]\ndatabase_url = {url}\nhistory_days = {history_days}\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return str(path)


def test_db_prune_dry_run_prints_counts_and_deletes_nothing(
    calendar: Calendar, history: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = calendar.database
    config = _config(tmp_path, database, HISTORY_DAYS)
    before = everything(database)
    capsys.readouterr()
    assert main(["db", "prune", "--dry-run", "--config", config]) == 0
    out = capsys.readouterr().out
    assert everything(database) == before
    assert "would delete" in out, out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}
    assert lines["leases"] == "5" and lines["slivers"] == "5" and lines["slices"] == "2", out

    assert main(["db", "prune", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "deleted" in out and "would" not in out, out
    assert gone(database, history["cancelled"])
    assert not gone(database, history["recent"])


def test_the_setting_is_validated(tmp_path: Path) -> None:
    from sfa_omf.config import MAXIMA, Settings, load_config
    from sfa_omf.web.app import FEED_PAST

    def problems(value: str) -> list[str]:
        path = tmp_path / "site.conf"
        path.write_text(f"[sfa]\ninterface_hrn = testbed\ndata_dir = {tmp_path}\n\n[sfa_omf]\nhistory_days = {value}\n")
        loaded = load_config(str(path), environ={})
        return [str(problem) for problem in loaded.problems if "history_days" in str(problem)]

    assert Settings(interface_hrn="testbed", data_dir=str(tmp_path)).history_days == 365
    assert problems("0") == [] and problems("30") == [] and problems(str(MAXIMA["history_days"])) == []
    assert problems("29") and problems("-1") and problems(str(MAXIMA["history_days"] + 1))
    assert FEED_PAST.days == 30  # the shortest history kept still holds every lease a feed shows


def test_the_leader_runs_it(calendar: Calendar, history: dict[str, str], tmp_path: Path) -> None:
    """One of the leader's periodic tasks (hourly), deleting what a pass does; none with history_days = 0."""
    from dataclasses import replace

    from sfa_omf.config import read_config
    from sfa_omf.server.app import HISTORY_PERIOD_S, background_tasks, build_aggregate

    url = calendar.database.engine.url.render_as_string(hide_password=False)
    assert main(["init", str(tmp_path / "tb"), "--no-demo"]) == 0  # a site's keys; the calendar is the test's
    settings = replace(read_config(str(tmp_path / "tb" / "sfa-omf.conf")), database_url=url, web_enabled=False)
    aggregate = build_aggregate(settings, upgrade=False, serving=False)
    try:
        assert not [
            task
            for task in background_tasks(replace(settings, history_days=0), aggregate, None)
            if task.name == "history retention"
        ]
        (task,) = [task for task in background_tasks(settings, aggregate, None) if task.name == "history retention"]
        assert task.period_s == HISTORY_PERIOD_S == 3600
        task.run()
    finally:
        aggregate.database.dispose()
    assert gone(calendar.database, history["cancelled"])
    assert not gone(calendar.database, history["recent"])
