"""The testbed's own reservations are mirrored in pseudo-slices ``external-<source>`` of the aggregate's authority
(calendar/external.py source_slice_urn): Allocate (v3) and CreateSliver (v2) in such a slice are refused (1,
naming the reserved prefix) before any work, whatever the credential (one for it could come from a registry older
than the one that refuses the name), and nothing is booked in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.external import is_source_slice, source_slice_urn
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.trust.pki import create_gid, new_private_key
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

GENI_V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
REQUEST = (
    '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
    f'<node client_id="n1" component_id="{node_urn("n1")}" exclusive="true"/></rspec>'
)


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1")) as made:
        yield made


def slice_credential(pki: DemoPki, urn: str) -> str:
    """alice's credential for the slice ``urn`` of the testbed authority, as a registry that let the name through
    would issue it."""
    slice_gid = create_gid(urn, new_private_key().public_key(), pki.authority.key, pki.authority.chain[0])
    return pki.authority.credential(pki.users["alice"].chain, (slice_gid, *pki.authority.chain))


def call(aggregate: Aggregate, pki: DemoPki, api: str, method: str, *params: Any) -> dict[str, Any]:
    context = CallContext(pki.users["alice"].chain, "127.0.0.1", "/" if api == "v3" else "/am2")
    handler = ApiV3(aggregate) if api == "v3" else ApiV2(aggregate)
    answer: dict[str, Any] = handler(context, method, params)
    return answer


@pytest.mark.parametrize("source", ["oar", "omf"])
def test_allocate_in_a_mirror_pseudo_slice_is_refused(aggregate: Aggregate, pki: DemoPki, source: str) -> None:
    mirror = source_slice_urn(aggregate.settings.authority_hrn, source)
    credentials = [slice_credential(pki, mirror)]

    allocated = call(aggregate, pki, "v3", "Allocate", mirror, credentials, REQUEST, GENI_V3)
    created = call(aggregate, pki, "v2", "CreateSliver", mirror, credentials, REQUEST, [], GENI_V3)

    for answer in (allocated, created):
        assert answer["code"]["geni_code"] == 1, answer
        assert "reserved for the testbed's own reservations" in answer["output"], answer
        assert "register a slice with another name" in answer["output"], answer
    assert aggregate.bookings.leases(active_only=False) == []


def test_a_slice_of_another_name_books(aggregate: Aggregate, pki: DemoPki) -> None:
    """A credential made the same way for a plain slice name books: the refusal is the name's alone."""
    plain = "urn:publicid:IDN+testbed+slice+experiment-oar"
    answer = call(aggregate, pki, "v3", "Allocate", plain, [slice_credential(pki, plain)], REQUEST, GENI_V3)
    assert answer["code"]["geni_code"] == 0, answer
    assert [lease.slice_urn for lease in aggregate.bookings.leases()] == [plain]


def test_only_this_authoritys_mirror_slices_are_pseudo_slices() -> None:
    assert is_source_slice("urn:publicid:IDN+testbed+slice+external-oar", "testbed")
    assert is_source_slice("urn:publicid:IDN+testbed+slice+External-OAR", "testbed")  # the registry refuses it too
    assert is_source_slice(source_slice_urn("tb.sub", "oar"), "tb.sub")
    assert not is_source_slice("urn:publicid:IDN+other+slice+external-oar", "testbed")
    assert not is_source_slice("urn:publicid:IDN+testbed:sub+slice+external-oar", "testbed")
    assert not is_source_slice("urn:publicid:IDN+testbed+slice+my-external-oar", "testbed")
    assert not is_source_slice("urn:publicid:IDN+testbed+user+external-oar", "testbed")
    assert not is_source_slice("not a urn", "testbed")
