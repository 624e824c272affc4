"""A slice of this aggregate's own authority is the slice its registry holds under that name now (am/caller_keys.py).

The registry removes a slice and registers the name again for someone else: the new slice has the same URN and a new
GID (another key). The earlier slice's credentials (valid for weeks, never revoked) name the same URN, so with the
trust layer's rule alone they would act on the new holder's slivers. In process, on both databases, with the
registry's records in the aggregate's database as ``sfa-omf serve`` has them, and the slice credentials the
registry's GetCredential gives (sfi.py's flow).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.am.caller_keys import DEFAULT_TTL_S, RegisteredKeys
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import CONFIG_FILE_NAME, read_config
from sfa_omf.errors import GeniCode
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.api import RegistryApi
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import GidChain, load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.xrn import hrn_to_urn
from tests.calendar.conftest import fresh_database

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

OURS = "tb"  # this aggregate's authority, whose registry is in its database
OTHER = "other"  # a federated authority the aggregate trusts


@dataclass(frozen=True)
class User:
    """A demo user's certificate and user credential, as sfa-omf init writes them into the user's sfi.py folder."""

    chain: GidChain
    user_cred: str
    demo_slice_cred: str  # for the demo slice of the user's authority


@dataclass(frozen=True)
class Sites:
    """Two authorities made by sfa-omf init, and one trusted-roots folder holding both roots."""

    ours: LocalAuthority
    other: LocalAuthority
    roots_dir: Path
    users: dict[str, User]


def _user(directory: Path, authority_hrn: str, name: str) -> User:
    hrn = f"{authority_hrn}.{name}"
    sfi = directory / "users" / name / "sfi"
    return User(
        load_gid_chain_file(str(sfi / f"{hrn}.user.gid")),
        (sfi / f"{hrn}.user.cred").read_text(),
        (sfi / f"{hrn}-{authority_hrn}.demo.slice.cred").read_text(),
    )


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Sites:
    """Made once for the module (key generation is the slow part); each test registers slices of its own names."""
    base = tmp_path_factory.mktemp("slice-keys")
    init_directory(str(base / OURS), OURS, ("alice", "bob"))
    init_directory(str(base / OTHER), OTHER, ("dave",))
    roots_dir = base / "trusted_roots"
    roots_dir.mkdir()
    for authority in (OURS, OTHER):
        for root in (base / authority / "trusted_roots").iterdir():
            shutil.copy(root, roots_dir / root.name)
    users = {name: _user(base / OURS, OURS, name) for name in ("alice", "bob")}
    users["dave"] = _user(base / OTHER, OTHER, "dave")
    return Sites(
        LocalAuthority.load(str(base / OURS), OURS), LocalAuthority.load(str(base / OTHER), OTHER), roots_dir, users
    )


@dataclass
class Clock:
    """The verdict cache's monotonic clock, moved by the test (no sleeping, no timing)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    """The aggregate of authority ``tb`` and its registry (the API and the operator's commands) on one database."""

    aggregate: Aggregate
    registry: RegistryApi
    admin: RegistryAdmin
    clock: Clock

    def later(self) -> None:
        """Past the time an accepted (slice, key) is believed without reading the registry again."""
        self.clock.now += DEFAULT_TTL_S + 1

    def call(self, user: User, method: str, *params: Any) -> Any:
        """An AM API v3 call (its envelope) as the holder of ``user``'s certificate."""
        return ApiV3(self.aggregate)(CallContext(user.chain, "127.0.0.1", "/"), method, params)

    def slice_credential(self, user: User, slice_hrn: str) -> str:
        """The registry's GetCredential for a slice, as sfi.py asks for it with the user's credential."""
        return self.registry.get_credential(
            CallContext(user.chain, "127.0.0.1", "/"), ([user.user_cred], slice_hrn, "slice")
        )

    def state(self) -> tuple[object, ...]:
        """Every lease with its slivers as stored, and every registry record."""
        records = Records(self.aggregate.database)
        return (
            tuple(self.aggregate.bookings.leases(active_only=False)),
            tuple(records.of_type("slice")),
            tuple(records.of_type("user")),
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path: Path, sites: Sites) -> Iterator[Site]:
    database = fresh_database(request.param, tmp_path)
    aggregate = Aggregate(
        AggregateSettings(authority_hrn=OURS),
        database,
        CredentialVerifier(load_trusted_roots(str(sites.roots_dir)), VerdictCache()),
    )
    for name in ("n1", "n2", "n3"):
        aggregate.inventory.add_node(NodeSpec(node(name), name))
    clock = Clock()
    aggregate.registered_keys.monotonic = clock
    records = Records(database)
    settings = read_config(str(Path(sites.ours.directory) / CONFIG_FILE_NAME))
    admin = RegistryAdmin(sites.ours, records, settings)  # records the authority and its GIDs, as sfa-omf serve does
    try:
        yield Site(aggregate, RegistryApi(sites.ours, records, aggregate.verifier), admin, clock)
    finally:
        database.dispose()


def node(name: str) -> str:
    return f"urn:publicid:IDN+{OURS}+node+{name}"


def request_for(name: str, hours_from_now: int) -> str:
    """A request for one node for an hour (OneLab's ol:lease)."""
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l1" valid_from="{format_time(start)}" '
        f'valid_until="{format_time(start + timedelta(hours=1))}"/>'
        f'<node client_id="{name}" component_id="{node(name)}" exclusive="true"><ol:lease_ref id_ref="l1"/></node>'
        "</rspec>"
    )


def code(answer: Any) -> int:
    return int(answer["code"]["geni_code"])


def registered_again(site: Site, sites: Sites) -> tuple[str, str, str]:
    """Alice's slice is registered, used, removed, and its name registered again for bob, who allocates n1 in it.
    Returns the slice's URN, alice's credential of the removed slice and bob's of the new one."""
    alice, bob = sites.users["alice"], sites.users["bob"]
    name = f"exp{uuid.uuid4().hex[:8]}"  # the authority's gids/ folder is shared by the module's tests
    slice_hrn = f"{OURS}.{name}"
    slice_urn = hrn_to_urn(slice_hrn, "slice")
    site.admin.create_slice(name, ["alice"])
    old_credential = site.slice_credential(alice, slice_hrn)
    # The control: alice's credential acts on her slice (which keeps nothing here after).
    assert code(site.call(alice, "Allocate", slice_urn, [old_credential], request_for("n2", 2), {})) == 0
    assert code(site.call(alice, "Delete", [slice_urn], [old_credential], {})) == 0
    site.admin.remove(name, "slice")
    site.admin.create_slice(name, ["bob"])
    new_credential = site.slice_credential(bob, slice_hrn)
    assert code(site.call(bob, "Allocate", slice_urn, [new_credential], request_for("n1", 3), {})) == 0
    site.later()  # alice's (slice, key) was accepted above: believed no longer
    return slice_urn, old_credential, new_credential


def assert_refused_as_an_earlier_slice(answer: Any, slice_urn: str) -> None:
    assert code(answer) == GeniCode.CREDENTIAL_MISMATCH, answer
    output = answer["output"]
    assert slice_urn in output and "registered again" in output and "new slice credential" in output, answer


def test_the_removed_slice_s_credential_is_refused_on_the_slice_registered_again(site: Site, sites: Sites) -> None:
    alice, bob = sites.users["alice"], sites.users["bob"]
    slice_urn, old_credential, new_credential = registered_again(site, sites)
    before = site.state()

    for method, params in (
        ("Status", ([slice_urn], [old_credential], {})),
        ("Delete", ([slice_urn], [old_credential], {})),
        ("Allocate", (slice_urn, [old_credential], request_for("n3", 4), {})),
    ):
        assert_refused_as_an_earlier_slice(site.call(alice, method, *params), slice_urn)
    assert site.state() == before, "a refused call changed nothing"

    status = site.call(bob, "Status", [slice_urn], [new_credential], {})
    assert code(status) == 0 and len(status["value"]["geni_slivers"]) == 1, "the new holder acts"
    assert code(site.call(bob, "Delete", [slice_urn], [new_credential], {})) == 0


def test_the_refusal_is_not_kept_and_an_accepted_slice_key_is_believed_for_the_ttl(site: Site, sites: Sites) -> None:
    """As for users: an accepted (slice, key) is believed for ttl_s without reading the registry (the time a removal
    takes to reach every process); a refusal is never kept."""
    alice = sites.users["alice"]
    name = f"exp{uuid.uuid4().hex[:8]}"
    slice_hrn, slice_urn = f"{OURS}.{name}", hrn_to_urn(f"{OURS}.{name}", "slice")
    site.admin.create_slice(name, ["alice"])
    credential = site.slice_credential(alice, slice_hrn)
    assert code(site.call(alice, "Status", [slice_urn], [credential], {})) != GeniCode.CREDENTIAL_MISMATCH
    record = Records(site.aggregate.database).get(slice_hrn)
    assert record is not None
    site.admin.remove(name, "slice")
    assert code(site.call(alice, "Status", [slice_urn], [credential], {})) != GeniCode.CREDENTIAL_MISMATCH, "believed"
    site.later()
    answer = site.call(alice, "Status", [slice_urn], [credential], {})
    assert code(answer) == GeniCode.CREDENTIAL_MISMATCH and "was removed" in answer["output"], answer
    Records(site.aggregate.database).add(record)  # the same slice recorded again (its own GID): acts at once
    assert code(site.call(alice, "Status", [slice_urn], [credential], {})) != GeniCode.CREDENTIAL_MISMATCH


def test_a_slice_of_another_authority_keeps_the_trust_layer_s_rule(site: Site, sites: Sites) -> None:
    """Our registry holds no record of other.demo: its authority's credential acts as before."""
    dave = sites.users["dave"]
    slice_urn = hrn_to_urn(f"{OTHER}.demo", "slice")
    assert code(site.call(dave, "Allocate", slice_urn, [dave.demo_slice_cred], request_for("n2", 5), {})) == 0
    assert code(site.call(dave, "Status", [slice_urn], [dave.demo_slice_cred], {})) == 0
    assert code(site.call(dave, "Delete", [slice_urn], [dave.demo_slice_cred], {})) == 0


def test_the_demo_slice_recorded_at_start_acts(site: Site, sites: Sites) -> None:
    """The slice credential sfa-omf init wrote for the demo slice (recorded from gids/ at start) acts."""
    alice = sites.users["alice"]
    slice_urn = hrn_to_urn(f"{OURS}.demo", "slice")
    assert code(site.call(alice, "Allocate", slice_urn, [alice.demo_slice_cred], request_for("n3", 6), {})) == 0
    assert code(site.call(alice, "Delete", [slice_urn], [alice.demo_slice_cred], {})) == 0


def test_a_slice_issued_since_the_start_acts_until_the_next_start_records_it(site: Site, sites: Sites) -> None:
    """``sfa-omf credential issue --type slice`` on a running server: the authority issues the slice's GID (gids/),
    the registry records it at its next start; meanwhile its credential acts (the registry never held the name)."""
    alice = sites.users["alice"]
    slice_hrn = f"{OURS}.issued{uuid.uuid4().hex[:8]}"
    slice_chain, _ = sites.ours.issue_gid(slice_hrn, "slice")
    credential = sites.ours.credential(alice.chain, slice_chain)
    slice_urn = hrn_to_urn(slice_hrn, "slice")
    assert code(site.call(alice, "Allocate", slice_urn, [credential], request_for("n1", 7), {})) == 0
    assert code(site.call(alice, "Delete", [slice_urn], [credential], {})) == 0


def test_records_without_a_gid_and_databases_without_a_registry_keep_the_urn_rule(site: Site, sites: Sites) -> None:
    keys = RegisteredKeys(Records(site.aggregate.database), OURS, ttl_s=0)
    records = Records(site.aggregate.database)
    assert keys.slice_refusal(hrn_to_urn(f"{OTHER}.x", "slice"), "a-key") is None, "another authority's slice"
    assert keys.slice_refusal(hrn_to_urn(f"{OURS}.alice", "user"), "a-key") is None, "no slice"
    assert keys.slice_refusal(hrn_to_urn(f"{OURS}.never", "slice"), "a-key") is None, "never registered here"
    records.add(Record(f"{OURS}.gone", "slice", hrn_to_urn(f"{OURS}.gone", "slice"), ""))
    assert keys.slice_refusal(hrn_to_urn(f"{OURS}.gone", "slice"), "a-key") is None, "a record without a GID"
    assert records.remove(f"{OURS}.gone")
    refused = keys.slice_refusal(hrn_to_urn(f"{OURS}.gone", "slice"), "a-key")
    assert refused is not None and refused.removed, "removed by the registry: refused"
    records.remove(OURS)  # no registry in this database: the URN rule alone
    assert keys.slice_refusal(hrn_to_urn(f"{OURS}.gone", "slice"), "a-key") is None


def test_the_next_holder_of_a_removed_slices_name_neither_sees_nor_deletes_its_slivers(
    site: Site, sites: Sites
) -> None:
    """Alice's slice is removed while her sliver is booked, and its name registered again for bob: her lease runs to
    its end as the removed slice's (renamed "URN (removed TIME)"), and bob's credential of the new slice neither lists
    it (Status) nor cancels it (Delete); his own work in the new slice is his."""
    alice, bob = sites.users["alice"], sites.users["bob"]
    name = f"exp{uuid.uuid4().hex[:8]}"
    slice_hrn = f"{OURS}.{name}"
    slice_urn = hrn_to_urn(slice_hrn, "slice")
    site.admin.create_slice(name, ["alice"])
    credential = site.slice_credential(alice, slice_hrn)
    assert code(site.call(alice, "Allocate", slice_urn, [credential], request_for("n2", 2), {})) == 0
    (hers,) = site.aggregate.bookings.leases(slice_urn=slice_urn)
    site.admin.remove(name, "slice")
    assert site.aggregate.bookings.leases(slice_urn=slice_urn) == [], "the removed slice keeps no name"
    # A call in flight at the removal (here: her credential's verdict still believed) books under the plain URN.
    assert code(site.call(alice, "Allocate", slice_urn, [credential], request_for("n3", 2), {})) == 0
    (late,) = site.aggregate.bookings.leases(slice_urn=slice_urn)
    site.admin.create_slice(name, ["bob"])
    new_credential = site.slice_credential(bob, slice_hrn)

    status = site.call(bob, "Status", [slice_urn], [new_credential], {})
    assert code(status) != 0 or status["value"]["geni_slivers"] == [], status
    site.call(bob, "Delete", [slice_urn], [new_credential], {})
    kept = {lease.id: lease for lease in site.aggregate.bookings.leases() if lease.id in (hers.id, late.id)}
    assert [lease.state for lease in kept.values()] == ["allocated"] * 2, "bob cancelled the removed slice's leases"
    assert all(lease.slice_urn.startswith(f"{slice_urn} (removed ") for lease in kept.values()), kept
    assert kept[hers.id].slice_urn != kept[late.id].slice_urn, "two slices, two names (names are unique)"
    assert code(site.call(bob, "Allocate", slice_urn, [new_credential], request_for("n1", 3), {})) == 0
    (his,) = site.aggregate.bookings.leases(slice_urn=slice_urn)
    assert his.id != hers.id
