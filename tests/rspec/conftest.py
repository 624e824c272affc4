"""Shared data for the RSpec tests: the fixture folder, a fixed "now" and the operator's policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rspec.parse_request import RequestPolicy

DATA = Path(__file__).resolve().parent / "data"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
POLICY = RequestPolicy(default_duration=timedelta(hours=2), grain=timedelta(minutes=30))

CM = "urn:publicid:IDN+omf:testbed+authority+cm"
IMAGE = "urn:publicid:IDN+omf:testbed+image+ubuntu-22.04"


def node_urn(name: str) -> str:
    """The testbed's URN for a node."""
    return f"urn:publicid:IDN+omf:testbed+node+{name}"


def read(name: str) -> bytes:
    """A fixture file's bytes."""
    return (DATA / name).read_bytes()
