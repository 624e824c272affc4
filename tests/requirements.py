"""Whether a test may skip for want of a service or tool, in one place.

A developer running a few tests without the services may want them to skip, saying why. Under CI (CI set) or
scripts/test.sh (SFA_OMF_TEST_REQUIRE_ALL=1) every test must run: a missing service is a failure, never a silent pass,
and tests/conftest.py turns any skip into a failure unless ALLOWED_SKIPS names it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

# Test ids (or their beginnings, ending in "::" or "/") allowed to skip even when every test must run, each with why.
# The full run scripts/test.sh makes had no skip at all, so no test needs to.
ALLOWED_SKIPS: dict[str, str] = {}


def require_all() -> bool:
    """Must every test run (CI, or scripts/test.sh's SFA_OMF_TEST_REQUIRE_ALL=1)?"""
    return bool(os.environ.get("CI")) or os.environ.get("SFA_OMF_TEST_REQUIRE_ALL", "") not in ("", "0")


def missing(failure: str, skip: str) -> NoReturn:
    """A test cannot run here: a failure saying ``failure`` when every test must run, else a skip saying ``skip``."""
    if require_all():
        pytest.fail(failure)
    pytest.skip(skip)


def skip_allowed(nodeid: str) -> bool:
    """Is this test (or a folder or file holding it) on ALLOWED_SKIPS?"""
    return any(
        nodeid == allowed or (allowed.endswith(("::", "/")) and nodeid.startswith(allowed)) for allowed in ALLOWED_SKIPS
    )
