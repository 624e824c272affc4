"""The OMF tests' real RabbitMQ: scripts/rabbitmq.sh starts it and scripts/test.sh exports its URL. Without the URL
the tests that need it skip, saying so; in CI (which always sets it) its absence fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import missing
from tests.testbed.omf.omf_lab import Lab, Running, begin_test_hour, end_test_hour, make_lab, serve


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    url = os.environ.get("SFA_OMF_TEST_RABBITMQ_URL", "")
    if not url:
        missing(
            "SFA_OMF_TEST_RABBITMQ_URL is not set: scripts/test.sh starts RabbitMQ and sets it",
            "SFA_OMF_TEST_RABBITMQ_URL is not set: run scripts/test.sh, or bash scripts/rabbitmq.sh up",
        )
    return url


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """An authority ``lab`` with user ann and her slice ``demo`` (one per test module)."""
    return make_lab(tmp_path_factory.mktemp("omflab") / "lab")


@pytest.fixture
def running(running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str) -> Iterator[Running]:
    """The lab's aggregate (``type = omf``) with the controllers' stand-ins, on topics of this test."""
    yield from serve(running_reactor, lab, tmp_path, rabbitmq_url)


@pytest.fixture(autouse=True)
def test_hour() -> Iterator[None]:
    """slot_start() is the same all through a test, even one that runs across the hour (it booked from the hour it
    began in, and looked for the lease an hour later: the clean-clone CI at 18:00)."""
    begin_test_hour()
    yield
    end_test_hour()
