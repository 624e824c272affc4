"""<dateTime.iso8601> as clients write it, over real TLS: every ISO 8601 form of a time is read (basic or extended,
with Z, an offset or a fraction of a second), converted to UTC, and what the handler gets reads as that UTC time.
Before, anything but 20261201T10:00:00 or 2026-12-01T10:00:00 was fault 1 "is not a time"."""

from __future__ import annotations

import xmlrpc.client
from datetime import UTC, datetime

import pytest

from sfa_omf.times import parse_time
from tests.conftest import DemoPki
from tests.server.test_transport import fault_of, raw_post, start
from tests.tls_harness import Listener

TEN_PM = datetime(2026, 12, 2, 22, tzinfo=UTC)


def call_with_datetime(text: str) -> bytes:
    """A methodCall Echo whose one param is a dateTime holding ``text`` as the client wrote it."""
    return (
        "<methodCall><methodName>Echo</methodName><params><param><value><dateTime.iso8601>"
        f"{text}</dateTime.iso8601></value></param></params></methodCall>"
    ).encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20261202T22:00:00", TEN_PM),  # the stdlib's own form: UTC
        ("2026-12-02T22:00:00", TEN_PM),
        ("20261202T22:00:00Z", TEN_PM),
        ("2026-12-02T22:00:00Z", TEN_PM),
        ("20261202T22:00:00+00:00", TEN_PM),
        ("2026-12-02T23:00:00+01:00", TEN_PM),  # an offset: converted to UTC
        ("2026-12-03T01:30:00+03:30", TEN_PM),
        ("20261202T220000", TEN_PM),  # basic time
        ("20261202T22:00:00.000", TEN_PM),  # a fraction of zero
        ("20261202T22:00:00.250", TEN_PM.replace(microsecond=250_000)),  # a fraction is kept
        (" 20261202T22:00:00 ", TEN_PM),
    ],
)
def test_every_iso_form_of_a_datetime_reaches_the_handler_in_utc(
    listener: Listener, pki: DemoPki, text: str, expected: datetime
) -> None:
    url = start(listener, pki)
    status, answer = raw_post(url, pki, call_with_datetime(text))
    assert status == 200
    echoed = xmlrpc.client.loads(answer)[0][0]["params"][0]
    assert isinstance(echoed, xmlrpc.client.DateTime)
    assert parse_time(echoed) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01T10:00:00"])
def test_a_datetime_that_is_no_time_is_still_refused(listener: Listener, pki: DemoPki, text: str) -> None:
    url = start(listener, pki)
    status, answer = raw_post(url, pki, call_with_datetime(text))
    fault = fault_of(answer)
    assert (status, fault.faultCode) == (200, 1)
    assert fault.faultString.startswith(f"param 1: <dateTime.iso8601> {text!r} is not a time such as"), (
        fault.faultString
    )


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_datetime_its_offset_moves_out_of_the_calendar_is_refused_saying_so(
    listener: Listener, pki: DemoPki, text: str
) -> None:
    url = start(listener, pki)
    status, answer = raw_post(url, pki, call_with_datetime(text))
    fault = fault_of(answer)
    assert (status, fault.faultCode) == (200, 1)
    assert fault.faultString.startswith(f"param 1: <dateTime.iso8601> {text!r} is out of range once converted to UTC")
