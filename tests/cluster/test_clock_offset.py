"""Several hosts on one PostgreSQL must agree on the time: the leader's background tasks compare the calendar with its
own clock. Real ``sfa-omf serve`` processes whose clock libfaketime shifts (the process's wall clock only: the
database's is the real one). What counts is the hosts disagreeing with each other, the database's clock the
tie-breaker: a single host a minute off the database starts and leads, warned; a host a minute ahead of a running
correct one does not start, and leading, steps down once a correct host serves beside it (and a leader whose clock
jumps ahead steps down before it releases anything); two hosts equally off the database (its clock the wrong one)
agree and one leads; an offset of a second leads as usual, one of a few seconds leads with a warning. And in one
process: the database's clock stepped while the hosts' records are older makes no host refuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from sfa_omf.calendar.database import Database, head_revision
from sfa_omf.cluster import leadership
from sfa_omf.cluster.leadership import DEFAULT_TAKEOVER_S, PostgresLock, check_period_s
from sfa_omf.config import Settings
from sfa_omf.preflight import clock_findings
from tests.cluster.harness import START_TIMEOUT_S, Lab, Serve, make_lab, request, window
from tests.postgres import empty_postgres

# Debian's faketime package (scripts/test.sh installs it), wherever the architecture puts its library.
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), Path("/nonexistent"))
TAKEOVER_S = 3

pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is not installed (apt install faketime)")


def skewed(offset: str) -> dict[str, str]:
    """The environment of a process whose clock is ``offset`` (libfaketime's syntax: +60s) off the real one."""
    # (The monotonic clock left alone: faked, Python's timed waits on a condition never end.)
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def following(path: Path) -> dict[str, str]:
    """The environment of a process whose clock offset is read from ``path`` at each reading of the clock: a clock
    that can jump while the process runs."""
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(path),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def test_a_single_host_a_minute_ahead_of_postgresql_starts_and_leads_warned(
    tmp_path: Path, servers: list[Serve]
) -> None:
    # Alone, its clock harms no one (the database's clock may be the wrong one): a warning, and service as usual.
    lab = make_lab(tmp_path, empty_postgres(), 0)
    ahead = Serve(lab, tmp_path, "ahead", "--workers", "1", **skewed("+60s"))
    servers.append(ahead)
    ahead.wait_ready()
    ahead.wait_for_line("now leads the background tasks")
    warning = ahead.wait_for_line("s ahead of the database's")
    assert "this host's clock is 60." in warning, warning
    assert "this host's clock or the database's is wrong" in warning and "NTP" in warning, warning
    assert not any("cannot start" in line or "does not lead" in line for line in ahead.lines), ahead.lines
    assert ahead.stop() == 0


def test_a_host_a_minute_ahead_of_a_serving_host_does_not_start(tmp_path: Path, servers: list[Serve]) -> None:
    lab = make_lab(tmp_path, empty_postgres(), 0)
    healthy = Serve(lab, tmp_path, "healthy", "--workers", "1")
    servers.append(healthy)
    healthy.wait_ready()
    healthy.wait_for_line("now leads the background tasks")
    ahead = Serve(lab, tmp_path, "ahead", "--workers", "1", **skewed("+60s"))
    servers.append(ahead)
    assert ahead.process.wait(timeout=START_TIMEOUT_S) != 0, ahead.lines
    ahead.stop()
    refusal = ahead.wait_for_line("cannot start")
    assert "s ahead of that of host" in refusal and "more than the 30 s allowed between hosts" in refusal, refusal
    assert "further from the database's" in refusal and "NTP" in refusal, refusal
    assert not any("now leads" in line for line in ahead.lines), ahead.lines
    assert not any("stops leading" in line for line in healthy.lines), healthy.lines


def test_a_leader_a_minute_ahead_steps_down_when_a_correct_host_serves(tmp_path: Path, servers: list[Serve]) -> None:
    lab = make_lab(tmp_path, empty_postgres(), 1)
    settings = {"SFA_OMF_LEADER_TAKEOVER_S": str(TAKEOVER_S)}
    ahead = Serve(lab, tmp_path, "ahead", "--workers", "1", **settings, **skewed("+60s"))
    servers.append(ahead)
    ahead.wait_ready()
    ahead.wait_for_line("now leads the background tasks")  # alone: it leads
    urn, credential = lab.slices[0]
    client = ahead.client(lab)
    answer = client.Allocate(urn, [credential], request(window(days_ahead=20, hour=5)), {})
    assert answer["code"]["geni_code"] == 0, answer

    healthy = Serve(lab, tmp_path, "healthy", "--workers", "1", **settings)
    servers.append(healthy)
    healthy.wait_ready()
    stepped_down = ahead.wait_for_line("stops leading the background tasks")
    assert "s ahead of that of host" in stepped_down and "more than the 30 s allowed between hosts" in stepped_down
    healthy.wait_for_line("now leads the background tasks")
    # The correct host was told at its start which host is the wrong one.
    told = healthy.wait_for_line("will not lead the background tasks")
    assert "s ahead of this host's" in told, told
    settled_at = time.monotonic()
    while time.monotonic() - settled_at < 3 * check_period_s(TAKEOVER_S):  # the new leader's tasks run meanwhile
        time.sleep(0.2)
    assert not any(line.count("now leads") for line in ahead.lines[ahead.lines.index(stepped_down) :]), ahead.lines
    (sliver,) = client.Status([urn], [credential], {})["value"]["geni_slivers"]
    assert sliver["geni_allocation_status"] == "geni_allocated"
    assert not any("released" in line for line in ahead.lines + healthy.lines), ahead.lines


def test_a_database_clock_a_minute_off_both_hosts_agree_and_one_leads(tmp_path: Path, servers: list[Serve]) -> None:
    # Both hosts shifted alike: to them, the database's clock is the one a minute off. Neither refuses.
    lab = make_lab(tmp_path, empty_postgres(), 0)
    first = Serve(lab, tmp_path, "first", "--workers", "1", **skewed("+60s"))
    servers.append(first)
    first.wait_ready()
    first.wait_for_line("now leads the background tasks")
    second = Serve(lab, tmp_path, "second", "--workers", "1", **skewed("+60s"))
    servers.append(second)
    second.wait_ready()
    second.wait_for_line("s ahead of the database's")  # each is warned of the database's clock
    settled_at = time.monotonic()
    while time.monotonic() - settled_at < 3 * check_period_s(DEFAULT_TAKEOVER_S):  # the second's lock tries meanwhile
        time.sleep(0.2)
    for server in (first, second):
        assert not any(
            word in line for line in server.lines for word in ("cannot start", "does not lead", "stops leading")
        ), server.lines
    assert first.stop() == 0
    second.wait_for_line("now leads the background tasks")  # the lead moves as usual


def test_a_leader_whose_clock_jumps_ahead_steps_down_and_releases_nothing(tmp_path: Path, servers: list[Serve]) -> None:
    lab: Lab = make_lab(tmp_path, empty_postgres(), 1)
    offset = tmp_path / "offset"
    offset.write_text("+0\n", encoding="utf-8")
    settings = {"SFA_OMF_LEADER_TAKEOVER_S": str(TAKEOVER_S)}
    jumping = Serve(lab, tmp_path, "jumping", "--workers", "1", **settings, **following(offset))
    servers.append(jumping)
    jumping.wait_ready()
    jumping.wait_for_line("now leads the background tasks")
    healthy = Serve(lab, tmp_path, "healthy", "--workers", "1", **settings)
    servers.append(healthy)
    healthy.wait_ready()
    urn, credential = lab.slices[0]
    client = healthy.client(lab)
    answer = client.Allocate(urn, [credential], request(window(days_ahead=20, hour=5)), {})
    assert answer["code"]["geni_code"] == 0, answer

    # 40 minutes ahead: past the allocation's 10 minutes to be provisioned, as the leader's clock sees it.
    offset.write_text("+40m\n", encoding="utf-8")
    stepped_down = jumping.wait_for_line("stops leading the background tasks")
    assert "s ahead of that of host" in stepped_down, jumping.lines
    assert "more than the 30 s allowed between hosts" in stepped_down, jumping.lines
    healthy.wait_for_line("now leads the background tasks")
    settled_at = time.monotonic()
    while time.monotonic() - settled_at < 3 * check_period_s(TAKEOVER_S):  # the new leader's tasks run meanwhile
        time.sleep(0.2)
    (sliver,) = client.Status([urn], [credential], {})["value"]["geni_slivers"]
    assert sliver["geni_allocation_status"] == "geni_allocated"
    assert not any("released" in line for line in jumping.lines + healthy.lines), jumping.lines
    assert not any(line.count("now leads") for line in jumping.lines[jumping.lines.index(stepped_down) :])


@pytest.mark.parametrize(("offset", "warned"), [("+1s", False), ("+6s", True)])
def test_a_small_offset_leads_and_a_few_seconds_are_warned_of(
    tmp_path: Path, servers: list[Serve], offset: str, warned: bool
) -> None:
    lab = make_lab(tmp_path, empty_postgres(), 0)
    server = Serve(lab, tmp_path, "close", "--workers", "1", **skewed(offset))
    servers.append(server)
    server.wait_ready()
    server.wait_for_line("now leads the background tasks")
    warnings = [line for line in server.lines if "ahead of the database's" in line]
    if warned:
        assert warnings and "NTP" in warnings[0], server.lines
    else:
        assert warnings == [], warnings
    assert server.stop() == 0


HOSTS = {"hostA:1": "hostA", "hostB:2": "hostB"}


def record(database: Database, process: str, offset_s: float) -> None:
    """Process ``process``'s row in cluster_settings, written now with clock offset ``offset_s``, as a serving
    process's refresh writes it (cluster/agreement.py)."""
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO cluster_settings (process, host, pid, started_s, seen_s, settings, clock_offset_s) "
                "VALUES (:process, :host, 1, extract(epoch FROM now())::bigint, extract(epoch FROM now())::bigint, "
                "'{}', :offset) ON CONFLICT (process) DO UPDATE SET clock_offset_s = :offset, "
                "seen_s = extract(epoch FROM now())::bigint"
            ),
            {"process": process, "host": HOSTS[process], "offset": offset_s},
        )


@contextmanager
def acting_as(monkeypatch: pytest.MonkeyPatch, process: str) -> Iterator[None]:
    """The lock's checks made as serving process ``process`` (host:pid) of another host: its own row is not a peer."""
    with monkeypatch.context() as patch:
        patch.setattr(leadership, "_whoami", lambda: process)
        yield


def test_a_step_of_the_database_clock_makes_no_host_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two hosts whose clocks agree, each recorded in cluster_settings (offset 0, as agreement.py writes it). The
    # database's clock is then stepped back 40 s (its NTP): every host's live offset becomes +40 at once, while the
    # rows still hold 0 until their next refresh (a minute). Stand-in for the step: this process's wall and monotonic
    # clocks both moved 40 s ahead (the database's clock cannot be stepped here): to the database they are alike.
    url = empty_postgres()
    database = Database(url)
    database.upgrade()

    for process in HOSTS:
        record(database, process, 0.0)
    first = PostgresLock(url, revision=head_revision(), key=4242)
    second = PostgresLock(url, revision=head_revision(), key=4242)
    try:
        with acting_as(monkeypatch, "hostA:1"):
            assert first.try_acquire() and first.refusal is None  # it leads
        with acting_as(monkeypatch, "hostB:2"):
            assert not second.try_acquire() and second.refusal is None  # it stands by

        real_time, real_monotonic, real_sleep = time.time, time.monotonic, time.sleep
        monkeypatch.setattr(time, "time", lambda: real_time() + 40)
        monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + 40)
        with acting_as(monkeypatch, "hostA:1"):
            assert first.still_held(), "the leader's lock"
            assert first.offset_s is not None and first.offset_s > 39, first.offset_s
            assert first.refusal is None, first.refusal  # the leader does not step down
        with acting_as(monkeypatch, "hostB:2"):
            assert not second.try_acquire()
            assert second.refusal is None, second.refusal  # nor would the standby refuse to take over

        # The standby's row rewritten after the step (+40), the leader's not yet (0): still no one refuses.
        record(database, "hostB:2", 40.0)
        with acting_as(monkeypatch, "hostA:1"):
            assert first.still_held() and first.refusal is None, first.refusal
        with acting_as(monkeypatch, "hostB:2"):
            assert not second.try_acquire() and second.refusal is None, second.refusal
        record(database, "hostA:1", 40.0)
        first.release()  # the leader stops: the standby takes over
        with acting_as(monkeypatch, "hostB:2"):
            # The leader's session ends at the server a moment after release (a clean-clone run tried too soon):
            # tried again, never refused, within a bound for failing only.
            deadline = real_monotonic() + 30
            while not second.try_acquire():
                assert second.refusal is None, second.refusal
                assert real_monotonic() < deadline, "the standby never took over"
                real_sleep(0.1)
            assert second.refusal is None, second.refusal

    finally:
        first.release()
        second.release()
        database.engine.dispose()


def test_a_host_whose_own_clock_jumps_refuses_at_its_next_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # The frames of the database's clock do not hide a step of this host's own wall clock (its monotonic clock does
    # not move with it): a leader 40 s ahead of the other host's record gives the lock back at its next check.
    url = empty_postgres()
    database = Database(url)
    database.upgrade()
    for process in HOSTS:
        record(database, process, 0.0)
    lock = PostgresLock(url, revision=head_revision(), key=4242)
    try:
        with acting_as(monkeypatch, "hostA:1"):
            assert lock.try_acquire() and lock.refusal is None
            real_time = time.time
            monkeypatch.setattr(time, "time", lambda: real_time() + 40)
            lock.still_held()
            assert lock.refusal is not None and "s ahead of that of host hostB" in lock.refusal, lock.refusal
            assert not lock.try_acquire()
    finally:
        lock.release()
        database.engine.dispose()


def test_a_host_starting_just_after_a_step_of_the_database_clock_is_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A serving host recorded offset 0; the database's clock is then stepped back 40 s (stand-in as above: this
    # process's wall and monotonic clocks 40 s ahead). A host starting now measures +40 against a record of 0: start-up
    # waits for that host's next record (its refresh, here written by a thread), which agrees, and starts.
    url = empty_postgres()
    database = Database(url)
    database.upgrade()
    record(database, "hostA:1", 0.0)
    real_time, real_monotonic = time.time, time.monotonic
    monkeypatch.setattr(time, "time", lambda: real_time() + 40)
    monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + 40)
    refresh = threading.Timer(2.0, record, (database, "hostA:1", 40.0))
    refresh.start()
    try:
        findings = clock_findings(Settings(interface_hrn="lab", data_dir=Path("/nonexistent"), database_url=url))
    finally:
        refresh.join()
        database.engine.dispose()
    assert not [finding for finding in findings if not finding.warning], findings
    assert any("40." in finding.message and "ahead of the database's" in finding.message for finding in findings)
