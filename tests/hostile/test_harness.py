"""The hostile suite's own checks can fail: a call that changes the state, a crash in the server's log and a wrong
answer are each reported, and the world is put back after a state change."""

from __future__ import annotations

import logging

import pytest
from twisted.logger import Logger

from tests.hostile.harness import Case, Env, Fault, World, format_time, ol_request, play, slot, stable, utcnow


def test_a_call_that_books_is_reported_and_undone(world: World) -> None:
    before = world.snapshot()
    booking = Case("meta", "v3", "Allocate", "valid", lambda w: (w.slice, w.slice_creds, w.free_request(), {}), Env(0))
    with pytest.raises(AssertionError) as reported:
        play(world, booking)
    assert "state changed: leases changed" in str(reported.value)
    assert "state changed: advertisement changed" in str(reported.value)
    after = world.snapshot()
    # The booking is cancelled, not erased: its row stays, so only the active leases are as they were.
    assert [change for change in after.differences(before) if not change.startswith("leases")] == []
    active = ("allocated", "provisioned")
    assert [lease for lease in after.leases if lease.state in active] == list(before.leases)


def test_a_wrong_code_and_a_wrong_kind_of_answer_are_reported(world: World) -> None:
    status = Case("meta", "v3", "Status", "valid", lambda w: ([w.slice], w.slice_creds, {}), Env(12, "nothing"))
    with pytest.raises(AssertionError, match="expected code 12, got 0"):
        play(world, status)
    as_fault = Case("meta", "v3", "GetVersion", "envelope", lambda w: (), Fault(1))
    with pytest.raises(AssertionError, match="expected XML-RPC fault 1, got envelope"):
        play(world, as_fault)


def test_the_log_trap_sees_python_and_twisted_errors(world: World) -> None:
    mark = world.logs.mark()
    logging.getLogger("sfa_omf.am").info("Renew caller=x slice=y geni_code=5 ms=1.0")
    logging.getLogger("sfa_omf.server").error("something broke")
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        Logger(namespace="twisted.web.server").failure("Processing Failed")
    lines = world.logs.since(mark)
    assert len(lines) == 3, lines
    assert "geni_code=5" in lines[0] and "something broke" in lines[1] and "RuntimeError: a bug" in lines[2]


def test_snapshots_ignore_the_clock_but_not_the_bookings() -> None:
    now = utcnow()
    document = f'<rspec generated="{format_time(now)}"><av:free start="{format_time(now)}"/></rspec>'
    assert stable(document) == '<rspec><av:free start="NOW"/></rspec>'
    booked = ol_request(("node1",), slot(5))
    assert stable(booked) == booked, "a booking's times are state, not clock"
