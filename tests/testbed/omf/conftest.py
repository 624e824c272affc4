"""The OMF tests' real RabbitMQ: scripts/rabbitmq.sh starts it and scripts/test.sh exports its URL. Without the URL
the tests that need it skip, saying so; in CI (which always sets it) its absence fails them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    url = os.environ.get("SFA_OMF_TEST_RABBITMQ_URL", "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("SFA_OMF_TEST_RABBITMQ_URL is not set: scripts/test.sh starts RabbitMQ and sets it")
        pytest.skip("SFA_OMF_TEST_RABBITMQ_URL is not set: run scripts/test.sh, or bash scripts/rabbitmq.sh up")
    return url
