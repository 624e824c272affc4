"""Image repository fixtures: a store over the calendar on SQLite and on a real PostgreSQL (tests/calendar's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.policy import Policy
from sfa_omf.images import node_containers
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import Calendar, fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def calendar(database: Database) -> Calendar:
    cal = Calendar(database, Policy())
    cal.add_nodes("n1", "n2")
    cal.add_nodes("big1", hardware_type="server")
    return cal


@pytest.fixture(scope="session")
def plan_signer(tmp_path_factory: pytest.TempPathFactory) -> PlanSigner:
    """The tests' aggregate key for lease plans and actions (sfa_omf/images/plan_signing.py)."""
    return PlanSigner(tmp_path_factory.mktemp("plan-signer") / "plan-signing.key")


@pytest.fixture(scope="session")
def plan_signers_file(plan_signer: PlanSigner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node's /etc/sfa-omf/plan-signers trusting the tests' key (root's, as the node command requires)."""
    path = tmp_path_factory.mktemp("node-etc") / "plan-signers"
    path.write_text(f"# the tests' aggregate\n{plan_signer.public_line()}\n")
    return path


@pytest.fixture(autouse=True)
def node_trusts_the_tests_signer(plan_signers_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The node command run in this process trusts the tests' key (one run in a process of its own is told so by
    its script: tests/images/plans_env.py node_script)."""
    monkeypatch.setattr(node_containers, "SIGNERS_FILE", plan_signers_file)
    return plan_signers_file


@pytest.fixture
def store(database: Database, tmp_path: Path) -> ImageStore:
    return ImageStore(database, tmp_path / "data" / "images")


def image_file(path: Path, size: int, seed: int = 1) -> Path:
    """A file of ``size`` bytes of a repeatable pattern (not all zeros, so checksums differ by seed)."""
    block = bytes((seed * 7 + i) % 251 for i in range(4096))
    with open(path, "wb") as out:
        for offset in range(0, size, len(block)):
            out.write(block[: min(len(block), size - offset)])
    return path
