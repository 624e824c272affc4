"""Shared fixtures. Every fixture certificate, key and credential is made here by the project's own PKI code;
the real-client interop vectors are read from ../shared/vectors when that folder exists."""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.trust.gid import GidChain, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import TrustedRoots, load_trusted_roots
from tests.requirements import missing, require_all, skip_allowed

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("SFA_OMF_VECTORS", REPO.parent / "shared" / "vectors"))


@dataclass
class DemoUser:
    name: str
    hrn: str
    key: rsa.RSAPrivateKey
    chain: GidChain
    sfi_dir: Path
    user_cred: str
    slice_cred: str


@dataclass
class DemoPki:
    """A local authority 'testbed' with users alice, bob and carol, a slice testbed.demo, made by sfa-omf init."""

    directory: Path
    authority: LocalAuthority
    roots: TrustedRoots
    slice_hrn: str
    slice_urn: str
    slice_chain: GidChain
    users: dict[str, DemoUser]


def _load_pki(directory: Path) -> DemoPki:
    authority = LocalAuthority.load(str(directory), "testbed")
    users = {}
    for name in ("alice", "bob", "carol"):
        hrn = f"testbed.{name}"
        sfi = directory / "users" / name / "sfi"
        users[name] = DemoUser(
            name=name,
            hrn=hrn,
            key=load_private_key_file(str(sfi / f"{hrn}.pkey")),
            chain=load_gid_chain_file(str(sfi / f"{hrn}.user.gid")),
            sfi_dir=sfi,
            user_cred=(sfi / f"{hrn}.user.cred").read_text(),
            slice_cred=(sfi / f"{hrn}-testbed.demo.slice.cred").read_text(),
        )
    return DemoPki(
        directory=directory,
        authority=authority,
        roots=load_trusted_roots(str(directory / "trusted_roots")),
        slice_hrn="testbed.demo",
        slice_urn="urn:publicid:IDN+testbed+slice+demo",
        slice_chain=authority.issued_chain("testbed.demo"),
        users=users,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """One demo authority for the whole session (RSA key generation is the slow part). Treat it as read-only."""
    directory = tmp_path_factory.mktemp("pki") / "authority"
    init_directory(str(directory), "testbed", ("alice", "bob", "carol"))
    return _load_pki(directory)


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The real-client interop vectors; tests that need them skip, saying why, where ../shared is absent."""
    if not (VECTORS / "sfa" / "manifest.json").exists():
        missing(
            f"interop vectors not found at {VECTORS}, and every test must run here (CI, SFA_OMF_TEST_REQUIRE_ALL)",
            f"interop vectors not found at {VECTORS} (set SFA_OMF_VECTORS or check out shared/ beside the repo)",
        )
    return VECTORS


def _skip_reason(longrepr: object) -> str:
    """The words of a skip (pytest keeps them as (file, line, reason))."""
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _skip_is_a_failure(report: pytest.TestReport | pytest.CollectReport, nodeid: str) -> None:
    # A skip is no pass: where every test must run (scripts/test.sh, CI), one that skipped fails, saying why it skipped.
    if report.skipped and not hasattr(report, "wasxfail") and require_all() and not skip_allowed(nodeid):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but every test must run here (SFA_OMF_TEST_REQUIRE_ALL=1 or CI; allow a skip in "
            f"tests/requirements.py ALLOWED_SKIPS, saying why): {_skip_reason(report.longrepr)}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Every skip of a test fails when every test must run."""
    outcome = yield
    _skip_is_a_failure(outcome.get_result(), item.nodeid)  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A whole module that skips (pytest.skip at import, importorskip) fails too when every test must run."""
    outcome = yield
    _skip_is_a_failure(outcome.get_result(), collector.nodeid)  # type: ignore[attr-defined]


@pytest.fixture
def register_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A removed user or slice name may be registered again at once: for tests of what the next holder of a name
    gets, not of the wait itself (registry/records.py REGISTER_AGAIN_AFTER_S; tests/registry/test_register_again_wait.py
    tests the wait)."""
    monkeypatch.setattr("sfa_omf.registry.records.REGISTER_AGAIN_AFTER_S", 0)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging (cli_server.py) gives the root logger a file handler: taken away afterwards."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


# The Twisted reactor runs once per test session, for every test that serves over TLS (tests/tls_harness.py).
from tests.tls_harness import listener, running_reactor  # noqa: E402, F401
