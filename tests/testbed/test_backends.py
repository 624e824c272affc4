"""Testbed backends: the embedded default, a third-party backend found through its entry point, and what the
aggregate does when the testbed is down (UNAVAILABLE, the booking stays allocated, a retry works)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import LeaseRecord, NodeSpec, SliverRecord
from sfa_omf.errors import GeniCode, GeniError, Reason
from sfa_omf.registry.records import Record, Records
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.omf.backend import OmfTestbed
from sfa_omf.testbed.registry import load_backend
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import chain_pem
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key

NODE = "urn:publicid:IDN+testbed+node+n1"


class FlakyTestbed:
    """A backend whose testbed can be switched off, standing in for a remote testbed that is down (the real OAR
    outage is tested with the OAR backend)."""

    name = "flaky"

    def __init__(self) -> None:
        self.up = False
        self.provisioned: list[str] = []
        self.owner = ""
        self.accounts: list[LocalAccount] = []

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        if not self.up:
            raise GeniError(Reason.UNAVAILABLE, "the testbed does not answer; the booking stays allocated: retry later")
        self.provisioned.append(lease.id)
        self.owner, self.accounts = owner, list(accounts)

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        pass

    def release(self, lease: LeaseRecord) -> None:
        self.provisioned.remove(lease.id)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        return SliverHealth("geni_ready")

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        pass

    def background_tasks(self) -> Sequence[BackgroundTask]:
        return ()


@pytest.fixture
def entry_point_package(tmp_path: Path) -> Iterator[str]:
    """A real installed distribution (dist-info on sys.path) declaring a backend in the sfa_omf.testbeds group."""
    module = tmp_path / "mylab_backend.py"
    module.write_text(
        textwrap.dedent(
            """
            from sfa_omf.testbed.embedded import EmbeddedTestbed

            class MyLab(EmbeddedTestbed):
                name = "mylab"

            def make_backend(settings):
                return MyLab()
            """
        )
    )
    dist = tmp_path / "mylab_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sfa_omf.testbeds]\nmylab = mylab_backend:make_backend\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield "mylab"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("mylab_backend", None)


def test_backends_by_name(entry_point_package: str) -> None:
    assert isinstance(load_backend("embedded", None), EmbeddedTestbed)
    # "omf" names the OMF 6 backend now (it was the embedded stand-in's name before issue 14).
    assert isinstance(load_backend("omf", None), OmfTestbed) and load_backend("omf", None).name == "omf"
    assert load_backend(entry_point_package, None).name == "mylab"
    with pytest.raises(GeniError) as refusal:
        load_backend("nitos", None)
    assert refusal.value.code == GeniCode.UNSUPPORTED
    assert "'nitos' is not available" in refusal.value.message and "embedded, omf, oar, mylab" in refusal.value.message


def test_a_testbed_that_is_down(pki: DemoPki, tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    backend = FlakyTestbed()
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots), backend=backend
    )
    aggregate.inventory.add_node(NodeSpec(NODE, "n1"))
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    end = start + timedelta(hours=1)
    request = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'
        f'<node client_id="n1" component_id="{NODE}"><ol:lease_ref id_ref="l"/></node></rspec>'
    )
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], request, {})
    with pytest.raises(GeniError) as refusal:
        aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert refusal.value.code == GeniCode.UNAVAILABLE and "retry" in refusal.value.message
    status: Any = aggregate.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert [s["geni_allocation_status"] for s in status["geni_slivers"]] == ["geni_allocated"]
    backend.up = True
    provisioned = aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert [s["geni_allocation_status"] for s in provisioned["geni_slivers"]] == ["geni_provisioned"]
    assert len(backend.provisioned) == 1
    aggregate.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert backend.provisioned == []


def test_backends_get_the_mapped_accounts_with_call_and_registry_keys(pki: DemoPki, tmp_path: Path) -> None:
    """The owner is the provisioning user's login; each account carries the keys its own user sent with the call and
    the keys registered in the local registry (not keys another member sent for them: tests/am/test_users_keys.py)."""
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    backend = FlakyTestbed()
    backend.up = True
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots), backend=backend
    )
    aggregate.inventory.add_node(NodeSpec(NODE, "n1"))
    alice, bob = pki.users["alice"], pki.users["bob"]
    alice_urn, bob_urn = alice.chain[0].urn or "", bob.chain[0].urn or ""
    Records(database).add(
        Record("testbed.alice", "user", alice_urn, chain_pem(alice.chain), keys=(ssh_key("alice@registry"),))
    )
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    request = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="n1" component_id="{NODE}"/></rspec>'
    )
    users = {
        "geni_users": [
            {"urn": alice_urn, "keys": [ssh_key("alice@laptop")]},
            {"urn": bob_urn, "keys": [ssh_key("bob@desk")]},
        ],
        "geni_start_time": format_time(start),
    }
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], request, users)
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert backend.owner == aggregate.accounts.login_for(alice_urn, pki.slice_urn)
    by_login = {account.login: account for account in backend.accounts}
    assert by_login[backend.owner].ssh_keys == (
        ssh_key("alice@laptop"),
        ssh_key("alice@registry"),
    )
    assert by_login[backend.owner].user_urns == (alice_urn,)
    bob_login = aggregate.accounts.login_for(bob_urn, pki.slice_urn)
    assert by_login[bob_login].ssh_keys == () and bob_login != backend.owner  # alice cannot vouch for bob@desk
