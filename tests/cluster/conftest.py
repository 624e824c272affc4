"""Fixtures of the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.harness import Serve


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    """The ``sfa-omf serve`` processes a test starts (it appends them): each stopped after the test."""
    started: list[Serve] = []
    yield started
    for server in started:
        server.stop()
