"""Fixtures for tests against a real OAR 2.5.9, started by scripts/oar.sh (fake nodes node1..node10, users alice and
bob, the REST API on 127.0.0.1:6668).

scripts/test.sh runs `scripts/oar.sh up` and sets SFA_OMF_TEST_OAR_URL. Without it the OAR tests skip, saying so —
except under CI (CI set), where a missing OAR is a failure, never a silent pass.

The OAR is shared by every test (and by reruns): each test books far in the future at a random time and on nodes of
its own, and deletes every job it made (``oar_jobs``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.testbed.oar.client import OarClient, OarError, OarJob, OarRefused
from tests.requirements import missing

REPO = Path(__file__).resolve().parents[3]
OAR_SCRIPT = REPO / "scripts" / "oar.sh"
OAR_USERS = ("alice", "bob")
# The key scripts/oar.sh's node command trusts (/etc/sfa-omf/plan-signers): the tests' aggregates sign plans with it.
RIG_PLAN_KEY = Path("/var/lib/sfa-omf-oar/plan-signing.key")


@pytest.fixture(scope="session")
def oar_url() -> str:
    """The base URL of the real OAR API (SFA_OMF_TEST_OAR_URL)."""
    url = os.environ.get("SFA_OMF_TEST_OAR_URL")
    if not url:
        missing(
            "SFA_OMF_TEST_OAR_URL is not set: scripts/test.sh starts OAR (scripts/oar.sh up) and sets it",
            "OAR not configured: run `bash scripts/oar.sh up` and set SFA_OMF_TEST_OAR_URL to the URL it prints last "
            "(scripts/test.sh does both)",
        )
    return url


@pytest.fixture(scope="session")
def oar_users(oar_url: str) -> tuple[str, ...]:
    """Unix users OAR accepts as job owners (scripts/oar.sh creates them)."""
    for user in OAR_USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"Unix user {user} is missing: run `bash scripts/oar.sh up`")
    return OAR_USERS


@pytest.fixture
def oar_client(oar_url: str) -> OarClient:
    """A client for the real OAR; a generous timeout, since every call is a Perl CGI (0.3-1.5 s)."""
    return OarClient(oar_url, timeout_s=60)


class OarJobs:
    """Submits reservations for a test and deletes every job it made (accepted or refused) when the test ends."""

    def __init__(self, client: OarClient) -> None:
        self.client = client
        self.made: list[tuple[int, str]] = []

    def submit(self, **request: Any) -> int:
        """client.submit_reservation(**request) with job_type "noop" (fake nodes) and a name by default."""
        request.setdefault("job_type", "noop")
        request.setdefault("name", "sfa-omf-test")
        try:
            job_id = self.client.submit_reservation(**request)
        except OarRefused as exc:
            if exc.job_id is not None:
                self.made.append((exc.job_id, request["user"]))
            raise
        self.made.append((job_id, request["user"]))
        return job_id

    def track(self, job_id: int, user: str) -> None:
        """Delete this job too at the end."""
        self.made.append((job_id, user))

    def delete_all(self) -> None:
        for job_id, user in self.made:
            # best effort: a later run books at other random times anyway
            with contextlib.suppress(OarError):
                self.client.delete_job(job_id, user=user)
        self.made.clear()


@pytest.fixture
def oar_jobs(oar_client: OarClient, oar_users: tuple[str, ...]) -> Iterator[OarJobs]:
    """Submit through this; every job made is deleted afterwards."""
    jobs = OarJobs(oar_client)
    yield jobs
    jobs.delete_all()


@pytest.fixture
def oar_start() -> datetime:
    """A random whole-minute UTC start 30 to 300 days ahead: reruns and other tests on the same OAR do not collide."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now + timedelta(days=30) + timedelta(minutes=random.randrange(270 * 24 * 60))


def wait_for_job(client: OarClient, job_id: int, states: set[str], *, within_s: float = 60) -> OarJob:
    """Poll (bounded) until the job is in one of ``states``; fail the test otherwise."""
    deadline = time.monotonic() + within_s
    while True:
        job = client.job(job_id)
        assert job is not None, f"OAR lost job {job_id}"
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job.state} after {within_s} s (expected one of {sorted(states)})")
        time.sleep(0.5)


def oar_script(*arguments: str) -> None:
    """Run scripts/oar.sh with these arguments (stop-api, start-api...); fail the test if it fails."""
    result = subprocess.run(["bash", str(OAR_SCRIPT), *arguments], capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        pytest.fail(f"scripts/oar.sh {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr}")
