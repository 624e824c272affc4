"""Several hosts on one PostgreSQL must agree on the time: the leader's background tasks compare the calendar with its
own clock. Real ``sfa-omf serve`` processes whose clock libfaketime shifts (the process's wall clock only: the
database's is the real one): one a minute ahead does not start; a leader whose clock jumps ahead steps down before it
releases anything, and a healthy host takes the lead; an offset of a second leads as usual, one of a few seconds leads
with a warning."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sfa_omf.cluster.leadership import check_period_s
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


def test_a_host_a_minute_ahead_of_postgresql_does_not_start(tmp_path: Path, servers: list[Serve]) -> None:
    lab = make_lab(tmp_path, empty_postgres(), 0)
    ahead = Serve(lab, tmp_path, "ahead", "--workers", "1", **skewed("+60s"))
    servers.append(ahead)
    assert ahead.process.wait(timeout=START_TIMEOUT_S) != 0, ahead.lines
    ahead.stop()
    refusal = ahead.wait_for_line("cannot start")
    assert "s ahead of the database's, more than the 30 s allowed" in refusal, ahead.lines
    assert "NTP" in refusal
    assert not any("now leads" in line for line in ahead.lines), ahead.lines


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
    assert "ahead of the database's, more than the 30 s allowed" in stepped_down, jumping.lines
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
