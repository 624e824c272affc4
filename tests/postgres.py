"""The real PostgreSQL of the tests (scripts/test.sh starts it and sets SFA_OMF_TEST_POSTGRES_URL), emptied for a test.

Without the URL a PostgreSQL case skips, saying so, except where every test must run (CI, scripts/test.sh's
SFA_OMF_TEST_REQUIRE_ALL=1: tests/requirements.py), where a missing PostgreSQL is a failure, never a silent pass.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text

from tests.requirements import missing

POSTGRES_URL = os.environ.get("SFA_OMF_TEST_POSTGRES_URL")


def empty_postgres() -> str:
    """The test database's URL, its schema dropped and made anew (the test then creates what it needs)."""
    if not POSTGRES_URL:
        missing(
            "SFA_OMF_TEST_POSTGRES_URL is not set: scripts/test.sh starts PostgreSQL and sets it",
            "PostgreSQL not configured: run scripts/test.sh, or set SFA_OMF_TEST_POSTGRES_URL",
        )
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return POSTGRES_URL
